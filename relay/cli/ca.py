"""``sluice ca init``: the local certificate authority the outbound door mints from."""

from __future__ import annotations

import argparse
import sys

from relay.cli.bootstrap import Commands, configured

__all__ = ["register"]


def _ca_init(args: argparse.Namespace) -> int:
    from relay.outbound.ca import ca_paths, create_ca

    config = configured(args.config, evidence_key=False, log_level="warning")
    data_dir = config.storage.data_dir
    label = config.server.hosts[0] if config.server.hosts else None
    cert_path, _ = ca_paths(data_dir)
    if create_ca(data_dir, label=label, force=args.force):
        print(
            f"made a new CA under {cert_path.parent} (its key is mode 0600: keep it there)",
            file=sys.stderr,
        )
        print("give the instance its certificate (deploy/outbound.md):", file=sys.stderr)
    else:
        print(
            f"a CA exists already under {cert_path.parent}; kept it "
            "(--force makes a new one, which every instance must then trust instead)",
            file=sys.stderr,
        )
    # The last line of the output, alone, so scripts can take it.
    print(cert_path)
    return 0


def register(commands: Commands) -> None:
    """``ca init``."""
    ca = commands.add_parser(
        "ca", help="the local certificate authority of the outbound door"
    ).add_subparsers(dest="ca_command", required=True)
    init = ca.add_parser(
        "init",
        help="make the CA under [storage] data_dir/ca and print its certificate's path",
    )
    init.add_argument("--config", "-c", help="TOML configuration file")
    init.add_argument(
        "--force", action="store_true", help="replace an existing CA (instances must re-trust)"
    )
    init.set_defaults(run=_ca_init)
