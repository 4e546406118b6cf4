# bash completion for qsnap. Installed by `make install` as
# $(PREFIX)/share/bash-completion/completions/qsnap; to try it without
# installing: `source completion/qsnap.bash`.
#
# Completes: the commands (`qsnap --help`), the `qsnap image` commands
# (`qsnap image --help`), each command's options (read from the Options
# section of `qsnap [image] COMMAND --help`, so they always match the
# program), format names after -f/-F/-O, and file names elsewhere. Where a
# tree command expects a snapshot or branch of DISK (the argument after the
# command), the names come from `qsnap list DISK --json` (a read-only query
# under the store's shared lock; nothing is offered when DISK has no store).

# _qsnap_words CMD...: the commands listed in a help text's command section.
_qsnap_words()
{
    "$@" --help 2>/dev/null | awk '
        /^(Snapshot tree commands|Commands|Plumbing):/ { on = 1; next }
        on && /^[^ ]/ { on = 0 }
        on && /^  [a-z]/ { print $1 }'
}

# _qsnap_options CMD...: the options listed in the Options section of CMD --help.
_qsnap_options()
{
    "$@" --help 2>/dev/null | awk '
        /^Options:/ { on = 1; next }
        on && /^[^ ]/ { on = 0 }
        on && /^ +-/ {
            for (i = 1; i <= NF; i++) {
                if ($i !~ /^-/) break
                t = $i; sub(/[,=].*/, "", t); print t
            }
        }'
}

# _qsnap_dequote WORD: WORD as the shell would read it, without expanding
# anything: backslash escapes and '...' / "..." quoting removed, so a disk
# typed as my\ disk.raw or "my disk.raw" is found.
_qsnap_dequote()
{
    local w=$1 out="" c q="" j
    for ((j = 0; j < ${#w}; j++)); do
        c=${w:j:1}
        if [ "$q" = "'" ]; then
            if [ "$c" = "'" ]; then q=""; else out+=$c; fi
        elif [ "$c" = "\\" ]; then
            # In "...", a backslash escapes only $ ` " \ (it stays before anything else).
            j=$((j + 1))
            case $q${w:j:1} in
            '"'[\$\`\"\\]) ;;
            '"'*) out+=$c ;;
            esac
            out+=${w:j:1}
        elif [ "$c" = "'" ] || [ "$c" = '"' ]; then
            if [ "$q" = "$c" ]; then q=""; elif [ -z "$q" ]; then q=$c; else out+=$c; fi
        else
            out+=$c
        fi
    done
    printf '%s' "$out"
}

# _qsnap_names QSNAP DISK KIND: snapshot ("snapshot"), branch ("branch") or
# both ("any") names of DISK's tree.
_qsnap_names()
{
    [ -e "$2.qsnap" ] || return 0
    "$1" list "$2" --json 2>/dev/null | awk -v want="$3" '
        /^ *"name": "/ { n = $0; sub(/^ *"name": "/, "", n); sub(/",?$/, "", n) }
        /^ *"kind": "/ {
            k = $0; sub(/^ *"kind": "/, "", k); sub(/",?$/, "", k)
            if (k != "unnamed" && (want == "any" || want == k)) print n
        }'
}

_qsnap()
{
    local cur prev qsnap=$1 cmd="" sub="" i n=0 disk="" kind=""
    local -a pos=()
    COMPREPLY=()
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD-1]}

    # The command (and image subcommand), then the positional words before cur.
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
        -*) continue ;;
        esac
        if [ -z "$cmd" ]; then
            cmd=${COMP_WORDS[i]}
        elif [ "$cmd" = image ] && [ -z "$sub" ]; then
            sub=${COMP_WORDS[i]}
        else
            pos+=("${COMP_WORDS[i]}")
        fi
    done

    if [ -z "$cmd" ]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "--help --version" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$(_qsnap_words "$qsnap")" -- "$cur"))
        fi
        return 0
    fi
    if [ "$cmd" = image ] && [ -z "$sub" ]; then
        COMPREPLY=($(compgen -W "$(_qsnap_words "$qsnap" image) --help" -- "$cur"))
        return 0
    fi

    case $prev in
    -f | --format | -F | -O)
        COMPREPLY=($(compgen -W "raw qcow2" -- "$cur"))
        return 0
        ;;
    -r)
        if [ "$sub" = check ]; then
            COMPREPLY=($(compgen -W "leaks all" -- "$cur"))
            return 0
        fi
        ;;
    -m)
        # create: a description; branch -m (move): the branch to rename.
        [ "$cmd" = branch ] && kind=branch || return 0
        ;;
    --port)
        return 0 # a TCP port
        ;;
    --socket)
        compopt -o filenames 2>/dev/null
        COMPREPLY=($(compgen -f -- "$cur"))
        return 0
        ;;
    --branch | -o | -S | --size)
        return 0 # a new name, creation options, a size: free text
        ;;
    -c)
        [ "$sub" = io ] && return 0 # a qemu-io command (convert -c is a flag)
        ;;
    --at) kind=snapshot ;;
    --from) kind=any ;;
    -d | --delete) [ "$cmd" = branch ] && kind=branch ;;
    esac

    if [[ $cur == -* ]]; then
        if [ -n "$sub" ]; then
            COMPREPLY=($(compgen -W "$(_qsnap_options "$qsnap" image "$sub")" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$(_qsnap_options "$qsnap" "$cmd")" -- "$cur"))
        fi
        return 0
    fi

    # Tree commands: DISK first, then names where the command takes them.
    if [ -z "$sub" ] && [ ${#pos[@]} -ge 1 ]; then
        disk=${pos[0]}
        disk=${disk/#\~/$HOME}
        disk=$(_qsnap_dequote "$disk")
        n=${#pos[@]}
        if [ -z "$kind" ]; then
            case $cmd:$n in
            info:1 | why:1 | diff:1 | diff:2 | export:1 | serve:1) kind=any ;;
            revert:1 | delete:1) kind=snapshot ;;
            switch:1 | commit:1) kind=branch ;;
            esac
        fi
        if [ -n "$kind" ]; then
            COMPREPLY=($(compgen -W "$(_qsnap_names "$qsnap" "$disk" "$kind")" -- "$cur"))
            return 0
        fi
        case $cmd in
        create | list | info | current | revert | switch | branch | delete | commit | diff | du | why | verify)
            # Only DISK is a file; everything after it is a name.
            [ "$prev" != --state ] && return 0
            ;;
        esac
    fi
    compopt -o filenames 2>/dev/null
    COMPREPLY=($(compgen -f -- "$cur"))
    return 0
}

complete -F _qsnap qsnap
