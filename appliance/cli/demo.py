"""`appliance demo` (`make demo`): a signed bundle from a model made by code, installed,
serving, answering.

Everything lives under out/demo (or the directory given): a vendor key and
trust root, an ONNX MLP from `bundler.samples`, appliance.yaml, the bundle,
and a site directory the headless install plan installs it into, with a
container engine when one answers (over the runtime image, built or cached)
or else the process engine (`appliance.cli.demo_site` decides and says why). It
ends with the endpoint, a sample curl and one real inference answer.
`--bundle-only` stops after building and verifying; `--stop` stops it.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from appliance.cli.types import SubParsers


def register(sub: SubParsers) -> None:
    """Add `appliance demo` to the top-level parser."""
    parser = sub.add_parser("demo", help="build a demo bundle, install it, serve it, answer once",
                            description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/demo", help="working directory (default out/demo)")
    parser.add_argument("--clean", action="store_true", help="start from an empty directory")
    parser.add_argument("--engine", choices=("auto", "docker", "process"), default="auto",
                        help="auto: a container engine when one answers, else the process one")
    parser.add_argument("--port", type=int, default=8000, help="the service port (default 8000)")
    parser.add_argument("--bundle-only", action="store_true",
                        help="only build the bundle and verify it into the site's store")
    parser.add_argument("--stop", action="store_true",
                        help="stop what an earlier demo left serving, remove its site, exit")
    parser.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo: build, verify, install, serve, answer; print what it did."""
    # Imported here: the demo makes its model with numpy and onnx (the samples extra),
    # which a core install of the `appliance` command does not have.
    from appliance.cli.demo_site import print_bundle, run_demo, stop_demo
    from bundler.demo import make_demo_bundle
    root = Path(args.out)
    started = time.monotonic()
    if args.stop:
        return stop_demo(root)
    if args.bundle_only:
        if args.clean and root.exists():
            shutil.rmtree(root)
        print_bundle(make_demo_bundle(root))
        print(f"done in {time.monotonic() - started:.1f} s")
        return 0
    return run_demo(root, engine=args.engine, port=args.port, clean=args.clean,
                    started=started)
