"""`appliance k8s render|images`: a verified bundle as Kubernetes objects and a k3s archive."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.bundle.imagearchive import write_image_archive
from appliance.bundle.store import ContentStore
from appliance.cli.keys import load_trust_root
from appliance.cli.types import SubParsers
from appliance.errors import RollbackError, SiteError
from appliance.fsutil import atomic_write, fsync_dir
from appliance.k8s.names import archive_name
from appliance.k8s.render import TOKEN_SECRET, RenderOptions, render
from appliance.site.state import SiteState

if TYPE_CHECKING:
    from appliance.bundle import VerifiedBundle

log = logging.getLogger(__name__)

DEFAULT_STATE = Path("/var/lib/appliance/k8s")  # the cluster's record, apart from a server's
RENDER_HEADER = "# Rendered by `appliance k8s render`"
K3S_IMAGES_DIR = "/var/lib/rancher/k3s/agent/images/"


def _verify(args: argparse.Namespace, store: ContentStore | None) -> VerifiedBundle:
    """Verify the bundle (signature, expiry, members) and refuse one older than this cluster's.

    Raises:
        BundleError (and subclasses), TrustError, SigningError: the bundle is not trusted.
        RollbackError: the bundle is older than the newest this cluster accepted.
    """
    from appliance.bundle import find_bundle_parts, verify_bundle

    root = load_trust_root(args.trust)
    if args.allow_expired:
        log.warning("verifying %s with --allow-expired: the expiry check is overridden",
                    args.bundle)
    # A cluster re-renders the release it runs (new options, a new node), so the
    # same sequence passes; older ones do not. Going back is `kubectl rollout undo`.
    verified = verify_bundle(find_bundle_parts(Path(args.bundle)), root, now=datetime.now(UTC),
                             store=store, allow_expired=args.allow_expired,
                             max_expired=timedelta(days=args.expired_max_days))
    state = SiteState.load(args.state)
    if verified.manifest.sequence < state.highest_sequence:
        raise RollbackError(
            f"bundle {args.bundle} is sequence {verified.manifest.sequence}, older than "
            f"{state.highest_sequence} already accepted for this cluster ({args.state}); "
            "to go back use `kubectl rollout undo`"
        )
    return verified


def _accept(args: argparse.Namespace, sequence: int) -> None:
    state = SiteState.load(args.state)
    if sequence > state.highest_sequence:
        try:
            SiteState(sequence, state.trust_root_version).save(args.state)
        except OSError as e:
            raise SiteError(f"cannot record sequence {sequence} in {args.state}: {e.strerror}; "
                            "pass --state DIR on a writable disk") from e


def _clear_previous_render(out: Path, force: bool) -> None:
    ours = []
    for p in sorted(out.iterdir()) if out.is_dir() else []:
        if p.name.startswith("."):  # .git, .gitkeep: the admin's, left alone
            continue
        if p.is_file() and p.suffix == ".yaml" and p.read_text(errors="replace").startswith(
                RENDER_HEADER):
            ours.append(p)
        else:
            raise SiteError(f"{out} holds {p.name}, which `appliance k8s render` did not write; "
                            "render into an empty or previously rendered directory")
    if ours and not force:
        raise SiteError(f"{out} holds an earlier render; pass --force to replace it")
    for p in ours:
        p.unlink()


def _render(args: argparse.Namespace) -> int:
    verified = _verify(args, store=None)
    manifest = verified.manifest
    options = RenderOptions(
        manifest_digest=verified.manifest_digest,
        node_gpu_memory_mib=args.node_gpu_memory_mib,
        replicas=args.replicas,
        namespace=args.namespace,
        cpu_only=args.cpu_only,
        runtime_class=args.runtime_class,
        token_secret=None if args.no_token else args.token_secret,
    )
    files = render(manifest, options)  # refuses before anything is written
    out = Path(args.out)
    _clear_previous_render(out, args.force)
    for name, text in files.items():
        atomic_write(out / name, text.encode())
    _accept(args, manifest.sequence)
    n = len(manifest.services)
    print(f"rendered {n} service{'s' if n != 1 else ''} of {manifest.name} {manifest.version} "
          f"(sequence {manifest.sequence}) to {out}")
    if options.token_secret is not None:
        ns = f" -n {args.namespace}" if args.namespace else ""
        print(f"the pods require a token: first run kubectl create secret generic "
              f"{options.token_secret}{ns} --from-file=token=TOKEN_FILE")
    print(f"apply with: kubectl apply -k {out}")
    return 0


def _images(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = None
    if args.store:
        store = ContentStore(Path(args.store))
    else:
        # Verified blobs land here, on the output's disk, and go when the archive is written.
        scratch = Path(tempfile.mkdtemp(prefix=".appliance-store-", dir=out))
        store = ContentStore(scratch)
    try:
        verified = _verify(args, store=store)
        manifest = verified.manifest
        target = out / archive_name(manifest.name, manifest.sequence)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=out)
        try:
            with os.fdopen(fd, "wb") as f:
                write_image_archive(f, store, manifest.images, digest_names=True)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
            fsync_dir(out)
        finally:
            Path(tmp).unlink(missing_ok=True)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    _accept(args, manifest.sequence)
    print(f"wrote {target} ({target.stat().st_size} bytes) with {len(manifest.images)} images:")
    for img in manifest.images:
        print(f"  {img.reference}  {img.manifest_digest}")
    print(f"copy it to {K3S_IMAGES_DIR} on every node (k3s imports it at start), "
          "or run: ctr -n k8s.io images import FILE")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE", help="the bundle (or the first of its parts)")
    p.add_argument("--trust", required=True, metavar="ROOT_JSON", help="the trust root file")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--state", type=Path, default=DEFAULT_STATE, metavar="DIR",
                   help=f"where this cluster's highest accepted sequence is kept "
                        f"(default {DEFAULT_STATE})")
    p.add_argument("--allow-expired", action="store_true",
                   help="accept an expired bundle (the site clock may be wrong); logged")
    p.add_argument("--expired-max-days", type=int, default=30, metavar="DAYS",
                   help="with --allow-expired: refuse a bundle expired longer ago than this "
                        "(default 30)")


def register(sub: SubParsers) -> None:
    """Add `appliance k8s render|images` to the top-level parser."""
    p = sub.add_parser("k8s", help="Kubernetes (k3s air-gap): manifests and image archive")
    ks = p.add_subparsers(dest="k8s_command", metavar="ACTION", required=True)

    r = ks.add_parser("render", help="Deployments, Services, PDBs and a kustomization.yaml")
    _common(r)
    r.add_argument("--node-gpu-memory-mib", type=int, metavar="N",
                   help="memory of one GPU on the GPU nodes; refuse models that need more")
    r.add_argument("--replicas", type=int, default=1, help="pods per service (default 1)")
    r.add_argument("--namespace", help="namespace set in kustomization.yaml")
    r.add_argument("--cpu-only", action="store_true",
                   help="no GPUs: serve gpu=preferred services on CPU, refuse gpu=required")
    r.add_argument("--runtime-class", metavar="NAME",
                   help="runtimeClassName for GPU pods (e.g. nvidia on k3s)")
    r.add_argument("--token-secret", default=TOKEN_SECRET, metavar="NAME",
                   help="the Secret (key 'token', one token a line) the pods mount and "
                        f"require (default {TOKEN_SECRET})")
    r.add_argument("--no-token", action="store_true",
                   help="no token in the pods: the cluster's Ingress checks it instead")
    r.add_argument("--force", action="store_true", help="replace an earlier render in DIR")
    r.set_defaults(func=_render)

    i = ks.add_parser("images", help="the verified images as one archive k3s imports")
    _common(i)
    i.add_argument("--store", metavar="DIR",
                   help="content store to verify into and reuse (needed for a delta bundle)")
    i.set_defaults(func=_images)
