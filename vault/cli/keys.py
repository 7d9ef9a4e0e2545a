"""``secretvault keys``: create, list, show, rotate, set-min-version, delete, public, import.

Key material never leaves the vault: keys are generated inside it or imported
sealed to its import key, and only public keys are read back.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from secretvault.vault.cli.connect import connect
from secretvault.vault.cli.errors import EXIT_OK, CliError
from secretvault.vault.cli.files import b64, print_json, write_output
from secretvault.vault.cli.render import key_json, show_key, show_keys


def _labels(pairs: Sequence[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"a label must be KEY=VALUE, got {pair!r}", "write --label team=ci")
        labels[key] = value
    return labels


def cmd_keys_create(args: argparse.Namespace) -> int:
    with connect(args) as vault:
        key = vault.create_key(args.name, args.type, _labels(args.label))
    if args.json:
        print_json(key_json(key))
    else:
        print(f"created {key.type} key {key.name!r}, version {key.primary_version}")
    return EXIT_OK


def cmd_keys_list(args: argparse.Namespace) -> int:
    with connect(args) as vault:
        keys = vault.list_keys(args.prefix)
    if args.json:
        print_json([key_json(k) for k in keys])
        return EXIT_OK
    if not keys:
        where = f" starting with {args.prefix!r}" if args.prefix else ""
        print(f"no keys{where}; create one with 'secretvault keys create NAME --type TYPE'")
        return EXIT_OK
    show_keys(keys)
    return EXIT_OK


def cmd_keys_show(args: argparse.Namespace) -> int:
    with connect(args) as vault:
        key = vault.get_key(args.name)
    if args.json:
        print_json(key_json(key))
    else:
        show_key(key)
    return EXIT_OK


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    with connect(args) as vault:
        key = vault.rotate_key(args.name)
    if args.json:
        print_json(key_json(key))
    else:
        print(f"rotated {key.name!r}: primary version is now {key.primary_version}")
    return EXIT_OK


def cmd_keys_set_min_version(args: argparse.Namespace) -> int:
    with connect(args) as vault:
        key = vault.set_min_decryption_version(args.name, args.version)
    if args.json:
        print_json(key_json(key))
    else:
        print(f"{key.name!r} now refuses versions below {key.min_decryption_version} "
              "for decrypt and verify")
    return EXIT_OK


def cmd_keys_delete(args: argparse.Namespace) -> int:
    with connect(args) as vault:
        if args.version:
            key = vault.delete_key_version(args.name, args.version)
            if args.json:
                print_json(key_json(key))
            else:
                print(f"deleted version {args.version} of {args.name!r} "
                      "(memory zeroed, sealed copy removed)")
            return EXIT_OK
        vault.delete_key(args.name)
    if args.json:
        print_json({"deleted": args.name})
    else:
        print(f"deleted {args.name!r}: every version zeroed and its sealed copies removed")
    return EXIT_OK


def cmd_keys_public(args: argparse.Namespace) -> int:
    with connect(args) as vault:
        pub = vault.public_key(args.name, version=args.version, format=args.format)
    if args.json:
        print_json({
            "name": pub.name, "type": pub.type, "version": pub.version,
            "format": pub.format,
            "public_key": b64(pub.data) if pub.format == "raw" else pub.data.decode(),
        }, args.out)
        return EXIT_OK
    data = pub.data if pub.format in ("raw", "pem", "openssh") else pub.data + b"\n"
    write_output(data, args.out, binary=pub.format == "raw", what="raw public key")
    return EXIT_OK


def cmd_keys_import(args: argparse.Namespace) -> int:
    from secretvault.clients import local

    try:
        material = local.read_key_material(args.from_file, args.type)
    except OSError as e:
        raise CliError(
            f"cannot read the key file {args.from_file}: {e.strerror or e}", "check the path"
        ) from None
    try:
        with connect(args) as vault:
            key = vault.import_key(args.name, args.type, material, _labels(args.label))
    finally:
        local.wipe(material)
    if args.json:
        print_json(key_json(key))
    else:
        print(f"imported {key.type} key {key.name!r} as version {key.primary_version} "
              "(sealed to the vault's import key before it left this process)")
    return EXIT_OK
