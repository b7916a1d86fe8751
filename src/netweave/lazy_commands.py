"""Subcommands that import their module only when they run.

``netweave --help`` lists every subcommand from its name and one-line help alone; running
``netweave replay`` imports the replay module and nothing of the agent, the shield or the
prober. Each subcommand names where it lives as ``"package.module:attribute"``: a typer
command function or a ``typer.Typer`` sub-app.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup

__all__ = ["Lazy", "LazyCommand", "lazy_group"]


@dataclass(frozen=True, slots=True)
class Lazy:
    """Where a subcommand lives (``"module:attribute"``) and its help line for the listing."""

    target: str
    help: str


class LazyCommand(TyperCommand):
    """A listed subcommand whose real command is built, by importing it, when it is invoked."""

    def __init__(self, name: str, lazy: Lazy) -> None:
        super().__init__(name, help=lazy.help)
        self.target = lazy.target

    def load(self) -> TyperCommand | TyperGroup:
        """The real command: import ``target`` and build it as typer would have eagerly."""
        module, _, attribute = self.target.partition(":")
        found = getattr(importlib.import_module(module), attribute)
        assert self.name is not None
        holder = typer.Typer()
        holder.callback()(_no_options)  # a holder with a callback stays a group of one
        if isinstance(found, typer.Typer):
            holder.add_typer(found, name=self.name)
        else:
            holder.command(self.name)(found)
        group = typer.main.get_command(holder)
        assert isinstance(group, TyperGroup)
        command = group.commands[self.name]
        assert isinstance(command, TyperCommand | TyperGroup)
        return command

    # The context type lives in typer's vendored click (a private module): typed as Any.
    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        """Parse ``args`` with the real command; the context it returns runs that command."""
        return self.load().make_context(info_name, args, parent=parent, **extra)


def lazy_group(commands: dict[str, Lazy]) -> type[TyperGroup]:
    """A typer group class (for ``typer.Typer(cls=...)``) listing ``commands`` first, lazily."""

    class LazyGroup(TyperGroup):
        def __init__(self, **attrs: Any) -> None:
            super().__init__(**attrs)
            eager = dict(self.commands)
            self.commands = {name: LazyCommand(name, lazy) for name, lazy in commands.items()}
            self.commands.update(eager)

    return LazyGroup


def _no_options() -> None:
    """The holder's callback: nothing of its own."""
