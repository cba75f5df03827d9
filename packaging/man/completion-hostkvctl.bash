# hostkvctl(8), hand-written part: domains are what libvirt knows, asked with virsh on the
# connection hostkvctl would use (--connect on the line, else $LIBVIRT_DEFAULT_URI, else
# virsh's default); at most 5 s, so a hung libvirtd cannot hang the shell.
_hostkvctl_domains() {
    local -a connect=()
    [[ $COMP_LINE =~ --connect[=[:space:]]+([^[:space:]]+) ]] && connect=(-c "${BASH_REMATCH[1]}")
    command -v virsh >/dev/null 2>&1 || return 0
    local -a limit=()
    command -v timeout >/dev/null 2>&1 && limit=(timeout 5)
    compgen -W "$("${limit[@]}" virsh -q "${connect[@]}" list --all --name 2>/dev/null)" -- "$1"
}

# _hostkvctl_positional NAME CUR PATH: complete the positional NAME of the command PATH
_hostkvctl_positional() {
    case $1 in
        domain|domains) COMPREPLY=($(_hostkvctl_domains "$2")) ;;
    esac
}

# _hostkvctl_option_value OPTION CUR
_hostkvctl_option_value() {
    case $1 in
        --control-socket) COMPREPLY=($(compgen -f -- "$2")) ;;
    esac
}
