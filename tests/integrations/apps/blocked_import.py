"""Import a module as if a package were not installed; print the error's name and text.

``python blocked_import.py flask jobhook.flask`` -> ``flask`` and the message, or
``imported`` when the import did not fail.
"""

from __future__ import annotations

import importlib
import sys
from importlib.abc import MetaPathFinder
from typing import Any


class Uninstalled(MetaPathFinder):
    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] == self.package:
            # What the import system raises for a package that is not installed.
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


if __name__ == "__main__":
    package, module = sys.argv[1:]
    sys.meta_path.insert(0, Uninstalled(package))
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        print(error.name, error, sep="\n")
    else:
        print("imported")
