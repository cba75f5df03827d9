#!/usr/bin/env python3
"""clidoc: hostkv's man pages and bash completions, generated from the commands' own argparse
parsers at build time (packaging/build-rpms.sh), so `man hostkvctl`, completion and `--help` can
never disagree.  Nothing here runs on the installed systems: the packages ship the generated
files, and the guest stays standard-library-only at run time.

    python3 packaging/man/clidoc.py --out DIR [--srcdir DIR]
        -> DIR/man/<page>.<section> for every entry of PAGES (+ the hand-written hostkvd.conf.5)
           DIR/completion/<command> for every entry of COMPLETIONS

Contract:
  * The parser of a command is the one its entry point parses with: ``main([])`` is called with
    ``ArgumentParser.parse_known_args`` intercepted, so whatever a command's main() builds --
    new options, new subcommands, nested subcommands -- is what gets documented.  No command
    needs a special hook; a main() that returns without parsing is an error.
  * The man pages are rendered by argparse-manpage (https://github.com/praiskup/argparse-manpage,
    Red Hat's tool, packaged in Fedora/EPEL), chosen over a home-made generator because it
    already renders nested subcommands, option groups and the "include" format for hand-written
    sections.  The prose --help lacks (FILES, EXIT STATUS, ENVIRONMENT, EXAMPLES, SEE ALSO) lives
    in packaging/man/<page>.<section>.include (argparse-manpage's help2man-style include format).
  * hostkvd.conf(5) is not a command: packaging/man/hostkvd.conf.5 is copied as it is.
  * Completions: packaging/man/completion-<command>.bash (hand-written: dynamic words such as
    keys or domains) is appended to generated tables of that command's subcommands, options and
    positionals, walked from the same parser, and a generic completion function.
  * Deterministic: the environment the commands read their defaults from (LIBVIRT_DEFAULT_URI,
    HOSTKV*, COLUMNS) is cleared first; the date is $SOURCE_DATE_EPOCH's, if set.

Exit status 0, or 1 with a one-line error naming the command or file.
"""

import argparse
import importlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = "hostkv"
MANUAL = "hostkv Manual"

# Where the commands' code lives in the source tree (all put on sys.path).
CODE_DIRS = ("protocol", "guest_agent", "host_service", "koan_patch", "cobbler_plugin")


class Page(object):
    """One generated man page: ``name(section)``, documenting ``module.main``'s parser."""

    def __init__(self, name, section, module, description, package):
        self.name, self.section, self.module = name, section, module
        self.description = description      # the NAME line, after "name - "
        self.package = package              # the RPM that installs it (packaging tests check)

    @property
    def filename(self):
        return "%s.%s" % (self.name, self.section)


PAGES = (
    Page("hostkv", 1, "hostkv.agent.cli", "read the KVM host's key/value data inside a guest",
         "hostkv-agent"),
    Page("hostkv-agent", 8, "hostkv.agent.__main__",
         "guest agent publishing the KVM host's key/value data in /run/hostkv", "hostkv-agent"),
    Page("hostkvd", 8, "hostkv.hostkvd.__main__",
         "serve host key/value data to KVM guests over virtio-serial", "hostkv-host"),
    Page("hostkvctl", 8, "hostkv.hostkvctl.cli", "administer hostkv on a KVM host", "hostkv-host"),
    Page("hostkv-koan", 8, "hostkv_koan.cli",
         "teach koan the hostkv channel and per-guest keys", "hostkv-host"),
    Page("hostkv-cobbler", 8, "hostkv_cobbler",
         "install hostkv's Cobbler 3.3 plugin and kickstart snippets", "hostkv-cobbler"),
)
# Hand-written pages (no parser behind them), copied as they are.
STATIC_PAGES = (("hostkvd.conf.5", "hostkv-host"),)
# Commands that get a bash completion (hand-written part: completion-<name>.bash).
COMPLETIONS = ("hostkv", "hostkvctl")

# What commands read their help defaults from; cleared so the build machine's settings do not
# end up in the pages (e.g. hostkvctl's --connect default is $LIBVIRT_DEFAULT_URI).
ENV_CLEARED_PREFIXES = ("HOSTKV", "LIBVIRT_")
ENV_CLEARED = ("COLUMNS",)


class ClidocError(RuntimeError):
    """The generator cannot do its job; the message says which command or file."""


class _Captured(Exception):
    def __init__(self, parser):
        Exception.__init__(self)
        self.parser = parser


def clean_environment(environ=os.environ):
    for name in list(environ):
        if name.startswith(ENV_CLEARED_PREFIXES) or name in ENV_CLEARED:
            del environ[name]


def setup_path(srcdir):
    for d in reversed(CODE_DIRS):
        path = os.path.join(srcdir, d)
        if not os.path.isdir(path):
            raise ClidocError("%s is missing (--srcdir %s)" % (path, srcdir))
        if path not in sys.path:
            sys.path.insert(0, path)


def capture_parser(module_name):
    """The ArgumentParser ``module_name.main([])`` parses with (see the module docstring)."""
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure is the build's error
        raise ClidocError("cannot import %s: %s: %s" % (module_name, type(err).__name__, err))
    main = getattr(module, "main", None)
    if main is None:
        raise ClidocError("%s has no main()" % module_name)
    original = argparse.ArgumentParser.parse_known_args

    def grab(self, args=None, namespace=None):
        raise _Captured(self)

    argparse.ArgumentParser.parse_known_args = grab
    try:
        main([])
    except _Captured as captured:
        return captured.parser
    finally:
        argparse.ArgumentParser.parse_known_args = original
    raise ClidocError("%s.main([]) returned without parsing its arguments" % module_name)


# ---------------------------------------------------------------- man pages

# man-pages(7)'s order of the sections after OPTIONS (the rest keep their include-file order).
SECTION_ORDER = ("exit status", "environment", "files", "notes", "examples", "see also")


def page_date():
    """The pages' date: $SOURCE_DATE_EPOCH's (reproducible builds) or today's, in UTC, spelled
    "December 1, 2026" (argparse-manpage would escape an ISO date's dashes, which mandoc then
    cannot parse)."""
    stamp = os.environ.get("SOURCE_DATE_EPOCH")
    when = time.gmtime(int(stamp)) if stamp and stamp.isdigit() else time.gmtime()
    return "%s %d, %d" % (time.strftime("%B", when), when.tm_mday, when.tm_year)


def roff_verbatim(text):
    """``text`` as a no-fill roff block, shown exactly as written (e.g. a shell example)."""
    out = [".nf"]
    for line in text.strip("\n").split("\n"):
        line = line.replace("\\", "\\e").replace("-", "\\-")
        out.append("\\&" + line if line.startswith((".", "'")) else line)
    out.append(".fi")
    return "\n".join(out)


def prepare(parser):
    """Adjust the parser's presentation for a man page (the parser object only, nothing else):
    a group that holds the subcommands is titled "commands", not "positional arguments"."""
    for _path, p in walk(parser):
        for group in p._action_groups:
            if any(isinstance(a, argparse._SubParsersAction) for a in group._group_actions):
                if group.title in (None, "positional arguments"):
                    group.title = "commands"


def render_page(page, parser, version, include=None):
    """The man page of ``parser``; its epilog becomes NOTES (verbatim if --help shows it raw)."""
    try:
        from argparse_manpage.manpage import Manpage
    except ImportError:
        raise ClidocError("argparse-manpage is not installed for %s (pip install argparse-manpage; "
                          "scripts/setup.sh puts it into .venv)" % sys.executable)
    prepare(parser)
    epilog, parser.epilog = parser.epilog, None
    data = {"project_name": PROJECT, "version": version, "manual_section": str(page.section),
            "date": page_date(),
            "manual_title": MANUAL, "description": page.description}
    if include is not None:
        data["include"] = include
    try:
        manpage = Manpage(parser, _data=data, format="single-commands-section")
        if epilog:
            raw = isinstance(parser._get_formatter(), argparse.RawDescriptionHelpFormatter)
            manpage.add_section("notes", ">",
                                roff_verbatim(epilog) if raw else manpage.format_text(epilog))
        # argparse-manpage's list of extra sections, in man-pages(7) order
        parser._manpage.sort(key=lambda s: SECTION_ORDER.index(s["heading"])
                             if s["heading"] in SECTION_ORDER else -1)
        return str(manpage)
    finally:
        parser.epilog = epilog


def write_pages(srcdir, out, version):
    mandir = os.path.join(out, "man")
    os.makedirs(mandir, exist_ok=True)
    written = []
    for page in PAGES:
        parser = capture_parser(page.module)
        include = os.path.join(HERE, page.filename + ".include")
        text = render_page(page, parser, version, include if os.path.isfile(include) else None)
        path = os.path.join(mandir, page.filename)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    for name, _package in STATIC_PAGES:
        path = os.path.join(mandir, name)
        with open(os.path.join(HERE, name), encoding="utf-8") as f:
            text = f.read().replace("@DATE@", page_date()).replace("@VERSION@", version)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    return written


# ---------------------------------------------------------------- bash completion

def subparsers_of(parser):
    """{name: subparser} of ``parser``'s subcommands (empty if it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def walk(parser, path=()):
    """Yield (path, parser) for ``parser`` and every (nested) subcommand, depth first."""
    yield path, parser
    for name, sub in sorted(subparsers_of(parser).items()):
        for item in walk(sub, path + (name,)):
            yield item


def completion_tables(parser):
    """The words completion needs, per subcommand path ("_", "_ vm", "_ vm set": bash has no
    empty array subscript):
    subcommands, all option strings, the options that take a value, the positionals' names (NAME+
    for one that repeats)."""
    tables = {"cmds": {}, "opts": {}, "args": {}, "pos": {}}
    for path, p in walk(parser):
        key = " ".join(("_",) + path)
        subs = subparsers_of(p)
        tables["cmds"][key] = sorted(subs)
        opts, args, pos = [], [], []
        for action in p._actions:
            if action.help == argparse.SUPPRESS:
                continue
            if action.option_strings:
                opts.extend(action.option_strings)
                if action.nargs != 0:
                    args.extend(action.option_strings)
            elif not isinstance(action, argparse._SubParsersAction):
                # NAME+ repeats (nargs +, *, ...); nargs=N takes N words; else one word
                if action.nargs in ("+", "*", argparse.REMAINDER):
                    pos.append(action.dest + "+")
                else:
                    pos.extend([action.dest] * (action.nargs if isinstance(action.nargs, int) else 1))
        tables["opts"][key], tables["args"][key], tables["pos"][key] = opts, args, pos
    return tables


def _bash_word(text):
    if not text or any(c in text for c in " \t\n'\"\\$`[]"):
        raise ClidocError("%r cannot be a completion word" % text)
    return text


def render_completion(command, parser, handwritten):
    fn = "_" + command.replace("-", "_")
    lines = ["# bash completion for %s(%s) -- generated by hostkv's packaging/man/clidoc.py"
             % (command, next(p.section for p in PAGES if p.name == command)),
             "# from %s's argparse parser (the same source as --help and the man page): do not edit."
             % command, ""]
    tables = completion_tables(parser)
    for table in ("cmds", "opts", "args", "pos"):
        lines.append("declare -gA %s_%s=(" % (fn, table))
        for key, words in sorted(tables[table].items()):
            lines.append("    [%s]='%s'" % ('"%s"' % key, " ".join(_bash_word(w) for w in words)))
        lines.append(")")
    lines.append(GENERIC.replace("@FN@", fn))
    lines.append(handwritten.rstrip("\n"))
    lines.append("complete -F %s %s" % (fn, command))
    return "\n".join(lines) + "\n"


# The generic part: walk the words before the cursor through the tables, then complete a
# subcommand, an option, or hand over to the command's own @FN@_positional NAME (hand-written).
# The walk splits COMP_LINE on white space itself, so COMP_WORDBREAKS (':' and '=' in URIs and
# KEY=VALUE words) cannot throw the count of positionals off.
GENERIC = r'''
@FN@() {
    local cur=${COMP_WORDS[COMP_CWORD]} path=_ npos=0 w i skip=0
    local -a words
    read -r -a words <<< "${COMP_LINE:0:COMP_POINT}"
    # the word being completed is not part of the walk (empty if the line ends in a space)
    [[ ${COMP_LINE:0:COMP_POINT} =~ [[:space:]]$ ]] || unset 'words[${#words[@]}-1]'
    for ((i = 1; i < ${#words[@]}; i++)); do
        w=${words[i]}
        if ((skip)); then skip=0; continue; fi
        case $w in
            --) ;;
            -*=*) ;;
            -*) [[ " ${@FN@_args[$path]} " == *" $w "* ]] && skip=1 ;;
            *) if [[ " ${@FN@_cmds[$path]} " == *" $w "* ]]; then
                   path="$path $w"; npos=0
               else
                   npos=$((npos + 1))
               fi ;;
        esac
    done
    COMPREPLY=()
    if ((skip)); then                     # the value of an option that takes one
        @FN@_option_value "${words[${#words[@]}-1]}" "$cur"
        return 0
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "${@FN@_opts[$path]}" -- "$cur"))
        return 0
    fi
    if [[ -n ${@FN@_cmds[$path]} ]]; then
        COMPREPLY=($(compgen -W "${@FN@_cmds[$path]}" -- "$cur"))
        return 0
    fi
    local -a pos=(${@FN@_pos[$path]})
    ((${#pos[@]})) || return 0
    if ((npos >= ${#pos[@]})); then       # past the last positional: only NAME+ repeats
        [[ ${pos[${#pos[@]}-1]} == *+ ]] || return 0
        npos=$((${#pos[@]} - 1))
    fi
    @FN@_positional "${pos[npos]%+}" "$cur" "$path"
    return 0
}
'''


def write_completions(out):
    compdir = os.path.join(out, "completion")
    os.makedirs(compdir, exist_ok=True)
    written = []
    for command in COMPLETIONS:
        page = next(p for p in PAGES if p.name == command)
        with open(os.path.join(HERE, "completion-%s.bash" % command), encoding="utf-8") as f:
            handwritten = f.read()
        path = os.path.join(compdir, command)
        with open(path, "w", encoding="utf-8") as f:
            f.write(render_completion(command, capture_parser(page.module), handwritten))
        written.append(path)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(prog="clidoc.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory (man/ and completion/ inside)")
    ap.add_argument("--srcdir", default=os.path.dirname(os.path.dirname(HERE)),
                    help="the hostkv source tree (default: this checkout)")
    args = ap.parse_args(argv)
    srcdir = os.path.abspath(args.srcdir)
    try:
        with open(os.path.join(srcdir, "VERSION"), encoding="utf-8") as f:
            version = f.read().strip()
        clean_environment()
        setup_path(srcdir)
        for path in write_pages(srcdir, args.out, version) + write_completions(args.out):
            print(path)
    except (ClidocError, OSError) as err:
        sys.stderr.write("clidoc.py: %s\n" % err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
