"""``cellsynth-cli``: the CLI reference, rendered at build time from ``cellsynth.cli.build_parser``.

The directive writes one section per subcommand holding that subcommand's ``--help`` text, so
the page always says what the installed parser says; nothing is copied by hand.
"""

from __future__ import annotations

import argparse
import os
from contextlib import contextmanager

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.application import Sphinx

WIDTH = "96"  # columns argparse wraps the help text to (it reads COLUMNS)


@contextmanager
def _columns(width: str):
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = width
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand, in the parser's order."""
    out = []
    for action in parser._actions:  # argparse keeps subparsers as one action among the others
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            out += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return out


class CellsynthCli(Directive):
    """Render ``cellsynth --help`` and each ``cellsynth COMMAND --help`` as sections."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from cellsynth import cli

        env = self.state.document.settings.env
        env.note_dependency(cli.__file__)
        with _columns(WIDTH):
            parser = cli.build_parser()
            result: list[nodes.Node] = [nodes.literal_block(text=parser.format_help().rstrip(),
                                                            language="text")]
            result += self._sections(parser, "cellsynth")
        return result

    def _sections(self, parser: argparse.ArgumentParser, prog: str) -> list[nodes.section]:
        """One section per subcommand of ``parser``, its own subcommands nested inside."""
        out = []
        for name, help_text, sub in _subcommands(parser):
            full = f"{prog} {name}"
            section = nodes.section(ids=[nodes.make_id(full)],
                                    names=[nodes.fully_normalize_name(full)])
            section += nodes.title(text=full)
            if help_text:
                sentence = help_text[0].upper() + help_text[1:].rstrip(".") + "."
                section += nodes.paragraph(text=sentence)
            section += nodes.literal_block(text=sub.format_help().rstrip(), language="text")
            section += self._sections(sub, full)
            self.state.document.note_implicit_target(section)
            out.append(section)
        return out


def setup(app: Sphinx) -> dict:
    app.add_directive("cellsynth-cli", CellsynthCli)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
