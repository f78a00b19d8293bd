# Writes switchboard(1) from the binary's --help, so the page lists exactly the
# options the option table has.
#   cmake -DBIN=path/to/switchboard -DVERSION=x.y.z -DOUT=switchboard.1 -P manpage.cmake
execute_process(COMMAND ${BIN} --help OUTPUT_VARIABLE help RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${BIN} --help failed (${rc})")
endif()
# roff: a backslash is \e, a minus is \-, a line may not start with . or '
string(REPLACE "\\" "\\e" help "${help}")
string(REPLACE "-" "\\-" help "${help}")
string(REGEX REPLACE "(^|\n)([.'])" "\\1\\\\&\\2" help "${help}")
# the usage line and the paragraph after it are the synopsis and description
string(FIND "${help}" "options:\n" at)
string(SUBSTRING "${help}" ${at} -1 options)
string(REPLACE "options:\n" "" options "${options}")
string(TIMESTAMP date "%Y-%m-%d" UTC)
file(WRITE ${OUT} ".TH SWITCHBOARD 1 \"${date}\" \"switchboard ${VERSION}\" \"User Commands\"
.SH NAME
switchboard \\- a scriptable WebSocket server
.SH SYNOPSIS
.B switchboard
[\\fIoptions\\fR] \\fIAPP_DIR\\fR
.SH DESCRIPTION
Serves the Lua route scripts in \\fIAPP_DIR\\fR over WebSocket
(\\fIAPP_DIR\\fR/chat.lua answers ws://host/chat) and the files in \\fIAPP_DIR\\fR/public
over plain HTTP. A saved script is live at once, without dropping a connection.
.PP
SIGHUP reloads every script; SIGTERM and SIGINT shut down gracefully
(close frames, then \\-\\-drain\\-timeout); a second signal exits at once.
The log goes to standard error, as text or, with \\-\\-log\\-format json, one JSON object
per line.
.SH OPTIONS
.nf
${options}.fi
.SH FILES
.TP
.I /usr/share/switchboard/scripts
the sample app (a chat and an echo route)
.TP
.I /usr/share/lua/5.4/switchboard/
the shipped Lua modules (switchboard.testing, editor types)
.TP
.I /usr/lib/systemd/system/switchboard.service
the systemd unit; its settings go in
.I /etc/default/switchboard
(SWITCHBOARD_APP, SWITCHBOARD_OPTS)
.SH SEE ALSO
The README of the source distribution is the full reference for route scripts.
")
