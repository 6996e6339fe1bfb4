"""Print the directory holding dnnl-config.cmake, shipped by the onednn-devel-cpu-gomp wheel."""
import importlib.metadata as md
import pathlib
import sys

for dist_name in ("onednn-devel-cpu-gomp", "onednn-devel"):
    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError:
        continue
    for f in dist.files or ():
        if f.name == "dnnl-config.cmake":
            print(pathlib.Path(dist.locate_file(f)).resolve().parent)
            sys.exit(0)
sys.exit("onednn-devel-cpu-gomp==2023.2.0 is not installed (dnnl-config.cmake not found)")
