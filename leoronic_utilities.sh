#!/usr/bin/env bash
# Leoronic's shell functions: `source leoronic_utilities.sh`, then e.g.
#   leoronic_add_task 1024 1 1024 false "" "" "echo hello world"
# Each function calls `leoronic <subcommand>` (the `leoronic` script beside this file).
# The node they talk to: LEORONIC_NODE=HOST:PORT (default: the local one).

_leoronic_here="${BASH_SOURCE[0]}"
[[ "$_leoronic_here" == */* ]] || _leoronic_here="./$_leoronic_here"
_leoronic_here="$(cd "${_leoronic_here%/*}" && pwd)"  # (no `dirname`: a process fewer)

_leoronic() { bash "$_leoronic_here/leoronic" "$@"; }

leoronic_add_task() { _leoronic add-task -- "$@"; }
leoronic_add_tasks_from_file() { _leoronic add-tasks-from-file "$@"; }
leoronic_get_queue() { _leoronic get-queue "$@"; }
leoronic_result() { _leoronic result "$@"; }
leoronic_wait() { _leoronic wait "$@"; }
leoronic_task_info() { _leoronic task-info "$@"; }
leoronic_del_task() { _leoronic del-task "$@"; }
leoronic_priority() { _leoronic priority "$@"; }
leoronic_hold() { _leoronic hold "$@"; }
leoronic_release() { _leoronic release "$@"; }
leoronic_task_format() { _leoronic task-format "$@"; }
leoronic_nodes() { _leoronic nodes "$@"; }
leoronic_add_tag() { _leoronic add-tag "$@"; }
leoronic_del_tag() { _leoronic del-tag "$@"; }
leoronic_drain() { _leoronic drain "$@"; }
leoronic_forget_node() { _leoronic forget-node "$@"; }
leoronic_resume() { _leoronic resume "$@"; }
leoronic_get_all_files() { _leoronic get-all-files "$@"; }
leoronic_get_files() { _leoronic get-files "$@"; }
