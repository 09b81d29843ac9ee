"""Scratch folders of the check scripts.

A folder given with --keep is used and left in place. Otherwise a new temporary folder is
made, removed at the end when every check passed, and kept (its path printed) when one
failed, to look at. Before, each run left its folder in /tmp: 3.5 GB for check_interop.py
alone, so a developer's /tmp filled up run after run.
"""

import os
import shutil
import sys
import tempfile

_made = []


def folder(keep, prefix):
    """`keep` (made if missing), or a new temporary folder named `prefix...`."""
    if keep:
        os.makedirs(keep, exist_ok=True)
        return keep
    work = tempfile.mkdtemp(prefix=prefix)
    _made.append(work)
    return work


def finish(code):
    """Removes the temporary folders when `code` (the exit status) is 0, else says where
    they are; returns `code`."""
    for work in _made:
        if code == 0:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"files kept in {work}", file=sys.stderr)
    _made.clear()
    return code
