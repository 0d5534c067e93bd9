"""ssi drmaa library [--header]: where libdrmaa.so.1 is, for DRMAA clients.

export DRMAA_LIBRARY_PATH=$(ssi drmaa library)     # the PyPI drmaa package
cc prog.c -I$(dirname $(ssi drmaa library)) -L... -ldrmaa
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ssi.cli.output import fail

if TYPE_CHECKING:
    from ssi.cli.main import Ctx


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = groups.add_parser(
        "drmaa",
        help="the DRMAA library (libdrmaa) for DRMAA clients",
        description="DRMAA 1.0: C programs linked with -ldrmaa and the Python "
        "`drmaa` package submit to this cluster through libdrmaa.so.1.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    lib = verbs.add_parser(
        "library",
        help="print the absolute path of libdrmaa.so.1 (DRMAA_LIBRARY_PATH)",
        description="Prints the absolute path of libdrmaa.so.1, the value for "
        "DRMAA_LIBRARY_PATH; drmaa.h and the libdrmaa.so link are beside it.",
    )
    lib.add_argument("--header", action="store_true", help="print drmaa.h's path")
    lib.set_defaults(func=cmd_library)


def cmd_library(ctx: Ctx) -> int:
    from ssi.drmaa import library_path

    try:
        path = library_path()
    except FileNotFoundError as e:
        fail(str(e))
        return 1
    # plain print: a path must not be wrapped or styled
    print(path.with_name("drmaa.h") if ctx.args.header else path, file=sys.stdout)
    return 0
