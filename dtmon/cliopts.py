"""How every dtmon command line (``dtmon``, ``producer``, ``processor``) maps flags to settings.

One rule: a flag that sets a ``dtmon.settings.Settings`` field is that field's name in
kebab case (``raw_topic`` -> ``--raw-topic``), its parameter is named like the field, and
its help is the field's description with its environment variable and default
(``setting_option``). ``settings_from`` turns the parameters into ``Settings`` (flags >
``DTMON_*`` environment > defaults); an older spelling of a flag stays accepted as a
hidden option whose parameter is ``<field>_alias`` (``alias_option``). Every command has
``--version`` (``version_option``). The options are for ``Annotated[..., option] = None``
parameters (the default goes on the parameter).
"""

from __future__ import annotations

from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from dtmon.settings import Settings, load_settings

ALIAS_SUFFIX = "_alias"


def setting_option(field: str, *other_decls: str, note: str = "", **kwargs: Any) -> Any:
    """``typer.Option`` for the ``Settings`` field ``field``: flag ``--<field-in-kebab-case>``.

    Help: the field's description (then ``note``, what the command does with it),
    ``[DTMON_<FIELD>; default <default>]``.

    Raises:
        KeyError: ``field`` is not a settings field.
    """
    info = Settings.model_fields[field]
    default = info.get_default(call_default_factory=False)
    shown = "none" if default is None else ("computed" if info.default_factory else default)
    help_text = f"{info.description}{'; ' + note if note else ''} [DTMON_{field.upper()}; default {shown}]"
    return typer.Option(f"--{field.replace('_', '-')}", *other_decls, help=help_text, show_default=False, **kwargs)


def alias_option(flag: str) -> Any:
    """A hidden ``typer.Option`` for an older spelling of a setting's flag (parameter ``<field>_alias``)."""
    return typer.Option(flag, hidden=True)


def settings_from(params: dict[str, Any], console: Console | None = None) -> Settings:
    """``Settings`` from the environment with the non-None flag values of ``params`` on top.

    ``params``: the command's parameters (e.g. ``locals()``); keys that are settings
    fields count, ``<field>_alias`` fills ``<field>`` when that is None, enums give their value.

    Raises:
        typer.Exit(2): a value is out of range or the Kafka config file is unreadable (the error is printed).
    """
    values = {}
    for name in Settings.model_fields:
        value = params.get(name)
        if value is None:
            value = params.get(name + ALIAS_SUFFIX)
        values[name] = value.value if isinstance(value, Enum) else value
    try:
        return load_settings(**values)
    except ValidationError as error:  # a value out of range, of the wrong type, not one of the choices
        _stderr(console).print(f"[bold red]error:[/] {escape(describe_validation_error(error))}", soft_wrap=True)
        raise typer.Exit(2) from None
    except (ValueError, OSError) as error:  # unreadable Kafka config file
        _stderr(console).print(f"[bold red]error:[/] invalid settings: {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(2) from None


def _stderr(console: Console | None) -> Console:
    """``console`` if it writes to stderr, else a stderr console (errors never go to stdout)."""
    return console if console is not None and console.stderr else Console(stderr=True)


def describe_validation_error(error: ValidationError) -> str:
    """One line per pydantic error (joined by ``; ``): which setting (its flag and ``DTMON_*`` variable),
    the value given and what is allowed, e.g.
    ``invalid setting --rate (DTMON_RATE) = -5.0: must be greater than or equal to 0``."""
    parts = []
    for item in error.errors(include_url=False):
        loc = [str(x) for x in item.get("loc", ())]
        field = loc[0] if loc else "?"
        where = ".".join(loc)
        if field in Settings.model_fields:
            name = f"--{field.replace('_', '-')} (DTMON_{field.upper()}{''.join('.' + x for x in loc[1:])})"
        else:
            name = where or "settings"
        allowed = item.get("msg", "not allowed")
        allowed = allowed[0].lower() + allowed[1:] if allowed else allowed
        allowed = allowed.replace("input should be", "must be")
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        parts.append(f"invalid setting {name}{shown}: {allowed}")
    return "; ".join(parts)


def package_version() -> str:
    """The installed dtmon version (``unknown`` outside an installation)."""
    try:
        return version("dtmon")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"dtmon {package_version()}")
        raise typer.Exit()


def version_option() -> Any:
    """``--version``: print ``dtmon <version>`` and exit."""
    return typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit")
