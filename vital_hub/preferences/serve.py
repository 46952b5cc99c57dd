"""`vital annotate serve` and `vital annotate add-annotator`: run the clinician annotation app (see app.py).

    vital annotate serve --items items.jsonl --out annotations/ --annotator dr_lee        # one clinician, laptop
    vital annotate add-annotator dr_lee --out annotations/ --url https://review.example.org:8443
    vital annotate add-annotator coordinator --admin --out annotations/ --url https://review.example.org:8443
    vital annotate serve --items items.jsonl --out annotations/ --host 0.0.0.0 --port 8443 \\
        --tls-cert cert.pem --tls-key key.pem

Beyond the loopback interface the app needs accounts, and it refuses plain HTTP (a session cookie or an invite
link would cross the network in clear) unless TLS is terminated by a reverse proxy (`--forwarded-allow-ips`)
or `--allow-insecure-http` says so.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from vital_hub.cli_args import DefaultsOnce, option_check, port
from vital_hub.preferences.accounts import SESSION_HOURS, Accounts, accounts_path, add_annotator
from vital_hub.preferences.items import ImageResolver, load_items


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsOnce, prog="vital annotate", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", formatter_class=DefaultsOnce, help="serve the annotation page")
    serve.add_argument("--items", required=True, help="items JSON/JSONL file, candidates folder or Hub repo id")
    serve.add_argument("--out", required=True, help="folder of per-annotator judgement logs (<annotator>.jsonl)")
    serve.add_argument("--annotator", help="without accounts: the one clinician judging on this machine")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (non-loopback needs accounts)")
    serve.add_argument("--port", type=port, default=7860, help="port (0: any free port, printed at start)")
    serve.add_argument("--images", help="folder of <pair_id>.jpg figures for items that carry no picture")
    serve.add_argument("--figures", help="figures dataset (folder or repo id) to look pictures up by pair_id")
    serve.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (with --tls-key)")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument(
        "--forwarded-allow-ips",
        help="behind a TLS reverse proxy: its address(es), whose X-Forwarded-For/-Proto are trusted",
    )
    serve.add_argument(
        "--allow-insecure-http", action="store_true", help="listen beyond loopback over plain HTTP anyway"
    )
    serve.add_argument(
        "--session-hours", type=option_check("session_hours"), default=SESSION_HOURS, help="a sign-in lasts this long"
    )
    add = sub.add_parser(
        "add-annotator", formatter_class=DefaultsOnce, help="create an account and print its invite link (shown once)"
    )
    add.add_argument("name", help="the clinician's name (letters, digits, '.', '_', '-'; case does not matter)")
    add.add_argument("--out", required=True, help="the serve command's --out folder (accounts live beside logs)")
    add.add_argument("--admin", action="store_true", help="an admin account: sees progress, judges nothing")
    add.add_argument("--replace", action="store_true", help="issue a new link for an existing name (old one dies)")
    add.add_argument("--url", default="http://127.0.0.1:7860", help="the address clinicians open")
    return parser.parse_args(argv)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off only for sockets that say so, else replies wait ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def check_serving(args: argparse.Namespace, accounts: Accounts) -> None:
    """Refuse, before anything is loaded, a setup that would expose judgements or credentials."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    for option, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{option} {path}: no such file")
    if accounts and args.annotator:
        raise ValueError(
            f"{accounts.path} holds accounts, so each clinician signs in with their own link; drop --annotator"
        )
    if not accounts and not args.annotator:
        raise ValueError(
            f"no accounts in {accounts.path}: give --annotator NAME (one clinician on this machine) or create "
            "accounts with `vital annotate add-annotator NAME --out ...`"
        )
    from vital_hub.preferences.app import is_loopback  # the web app (fastapi) loads once the options are read

    if is_loopback(args.host):
        return
    if not accounts:
        raise ValueError(
            f"refusing to listen on {args.host} without accounts; create them with `vital annotate add-annotator`"
            " (or listen on 127.0.0.1)"
        )
    if not args.tls_cert and not args.forwarded_allow_ips and not args.allow_insecure_http:
        raise ValueError(
            f"refusing to listen on {args.host} over plain HTTP: give --tls-cert/--tls-key, or "
            "--forwarded-allow-ips behind a TLS reverse proxy, or --allow-insecure-http"
        )


def serve(args: argparse.Namespace) -> int:
    from vital_hub.preferences.app import Annotation, Gate, create_app

    accounts = Accounts(args.out)
    check_serving(args, accounts)
    resolver = ImageResolver(args.images, args.figures)
    resolver.check_sources()
    items = load_items(args.items)
    annotation = Annotation(items, args.out, resolver)
    gate = Gate(accounts if accounts else None, args.annotator, args.session_hours)
    import uvicorn

    sock = bind(args.host, args.port)
    port = sock.getsockname()[1]
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    scheme = "https" if args.tls_cert else "http"
    if gate.local is not None:
        store = annotation.store(gate.local.name)
        who = f"for {store.annotator} ({annotation.done(store)} judged; local only)"
    else:
        who = f"for {len(accounts.names())} clinicians (accounts in {accounts.path})"
    line = f"serving {len(items)} items {who} on {scheme}://{shown_host}:{port}/ ; judgements in {args.out}"
    config = uvicorn.Config(
        create_app(annotation, gate),
        log_level="warning",
        access_log=False,
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
        proxy_headers=bool(args.forwarded_allow_ips),
        forwarded_allow_ips=args.forwarded_allow_ips,
    )
    announcing_server(uvicorn, config, line).run(sockets=[sock])
    return 0


def announcing_server(uvicorn, config, line: str):
    """A uvicorn server that prints `line` (the URL) only once it accepts connections, so a script or a person
    that opens the URL as soon as it appears is answered."""

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                print(line, flush=True)

    return AnnouncingServer(config)


def add(args: argparse.Namespace) -> int:
    name, credential = add_annotator(args.out, args.name, "admin" if args.admin else "annotator", args.replace)
    link = f"{args.url.rstrip('/')}/login#key={credential}"
    print(f"{'admin' if args.admin else 'annotator'} {name} added to {accounts_path(args.out)}")
    print("invite link (shown only now; send it to this person alone):")
    print(link)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    return serve(args) if args.command == "serve" else add(args)
