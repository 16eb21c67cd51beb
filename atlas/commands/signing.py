"""`atlas signing init`: the learner's key that signs prompt versions and checkpoints."""

from __future__ import annotations

from typing import Annotated

import typer

from atlas.commands.common import clear_errors, console, get_settings

app = typer.Typer(help="The key that signs prompt versions and checkpoints.", no_args_is_help=True)


@app.command("init")
@clear_errors
def signing_init(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option(help="Replace an existing key pair.")] = False,
) -> None:
    """Make the learner's ed25519 key pair in $ATLAS_HOME/secrets (the private key 0600).

    From then on the learners and rollbacks of this host sign every prompt version and
    checkpoint, and its agents switch only to correctly signed ones. Agents elsewhere get the
    printed public key as ATLAS_SIGNING_PUBLIC_KEY; learners elsewhere the private key as
    ATLAS_SIGNING_KEY (from a secret store, never a command line)."""
    from schemas.secrets import private_dir
    from schemas.signing import PRIVATE_KEY_FILE, create_keys

    folder = private_dir(get_settings(ctx).secrets_dir)
    if (folder / PRIVATE_KEY_FILE).exists() and not force:
        raise typer.BadParameter(
            f"{folder / PRIVATE_KEY_FILE} exists; --force replaces it (agents then refuse "
            "everything signed with the old key)"
        )
    signer = create_keys(folder)
    console.print(f"signing key: {folder / PRIVATE_KEY_FILE} (0600)")
    console.print(f"public key (ATLAS_SIGNING_PUBLIC_KEY): {signer.public_key()}", soft_wrap=True)
