# hostkv(1), hand-written part: the keys are what the agent published, read from its run dir
# ($HOSTKV_RUN_DIR or --run-dir on the line, default /run/hostkv): one file per key in keys/.
_hostkv_keys() {
    local run=${HOSTKV_RUN_DIR:-/run/hostkv}
    [[ $COMP_LINE =~ --run-dir[=[:space:]]+([^[:space:]]+) ]] && run=${BASH_REMATCH[1]}
    [[ -d $run/keys ]] || return 0
    compgen -W "$(ls -1 "$run/keys" 2>/dev/null)" -- "$1"
}

# _hostkv_positional NAME CUR PATH: complete the positional NAME of the command PATH
_hostkv_positional() {
    case $1 in
        key) COMPREPLY=($(_hostkv_keys "$2")) ;;
    esac
}

# _hostkv_option_value OPTION CUR
_hostkv_option_value() {
    case $1 in
        --run-dir) COMPREPLY=($(compgen -d -- "$2")) ;;
        --socket) COMPREPLY=($(compgen -f -- "$2")) ;;
    esac
}
