"""omibuild completion bash|zsh — a completion script made from the parser itself, so the
verbs and options it offers are always the ones the CLI has."""

from __future__ import annotations

import argparse
import sys

from omibuild.cli import build_parser
from omibuild.errors import EXIT_OK


def verb_options(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """verb -> its option strings (long and short), and choices of --format and positionals."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out: dict[str, list[str]] = {}
    for verb, p in sub.choices.items():
        words: list[str] = []
        for action in p._actions:
            words += action.option_strings
            if not action.option_strings and action.choices:
                words += [str(c) for c in action.choices]
        out[verb] = sorted(set(words) - {"-h"})
    return out


def bash_script(options: dict[str, list[str]]) -> str:
    cases = "".join(
        f'        {verb}) opts="{" ".join(words)}" ;;\n' for verb, words in options.items()
    )
    return f"""\
# bash completion for omibuild (omibuild completion bash)
_omibuild() {{
    local cur verb opts
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{" ".join(options)} --help --version" -- "$cur"))
        return
    fi
    verb="${{COMP_WORDS[1]}}"
    case "$verb" in
{cases}        *) opts="" ;;
    esac
    if [[ "$cur" == -* || "$verb" == completion ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -F _omibuild omibuild
"""


def zsh_script(options: dict[str, list[str]]) -> str:
    cases = "".join(f"    {verb}) opts=({' '.join(words)}) ;;\n" for verb, words in options.items())
    return f"""\
#compdef omibuild
# zsh completion for omibuild (omibuild completion zsh)
_omibuild() {{
  local -a opts
  if (( CURRENT == 2 )); then
    compadd -- {" ".join(options)} --help --version
    return
  fi
  case "${{words[2]}}" in
{cases}  esac
  if [[ "${{words[CURRENT]}}" == -* || "${{words[2]}}" == completion ]]; then
    compadd -- $opts
  else
    _files
  fi
}}
compdef _omibuild omibuild
"""


def run(args: argparse.Namespace) -> int:
    options = verb_options(build_parser())
    sys.stdout.write(bash_script(options) if args.shell == "bash" else zsh_script(options))
    return EXIT_OK
