# Writes a man page made of a program's own --help, so that the two cannot
# drift: run at build time (cmake -P) on the binary just built.
#   cmake -DBIN=path/to/qpipe -DNAME=qpipe -DSUMMARY="one line"
#         [-DSUBCOMMANDS=ON] -DOUT=qpipe.1 -P QpManPage.cmake
# The help text goes in as is (no fill), escaped for roff. With
# SUBCOMMANDS, each command listed under "Commands:" in --help gets a
# section of its own from BIN COMMAND --help.
foreach(v BIN NAME SUMMARY OUT)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "QpManPage.cmake: -D${v}=... is required")
  endif()
endforeach()

# run(OUT_VAR ARGS...): BIN's stdout for ARGS; a failure stops the build.
function(run out)
  execute_process(COMMAND ${BIN} ${ARGN} OUTPUT_VARIABLE text
                  RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${BIN} ${ARGN}: exit ${rc}: ${err}")
  endif()
  set(${out} "${text}" PARENT_SCOPE)
endfunction()

# roff(OUT_VAR TEXT): TEXT as a no-fill block, roff's specials escaped.
function(roff out text)
  string(REPLACE "\\" "\\e" text "${text}")
  string(REPLACE "-" "\\-" text "${text}")
  # A line that starts with . or ' would be a request.
  string(REGEX REPLACE "(^|\n)([.'])" "\\1\\\\&\\2" text "${text}")
  string(REGEX REPLACE "\n+$" "" text "${text}")
  set(${out} ".nf\n${text}\n.fi\n" PARENT_SCOPE)
endfunction()

run(help --help)
run(version --version)
string(STRIP "${version}" version)
string(TOUPPER "${NAME}" upper)

# The first line is the usage: the synopsis; the rest the description.
string(FIND "${help}" "\n" nl)
string(SUBSTRING "${help}" 0 ${nl} usage)
string(SUBSTRING "${help}" ${nl} -1 rest)
string(REGEX REPLACE "^usage: " "" usage "${usage}")
string(REGEX REPLACE "^\n+" "" rest "${rest}")
string(REPLACE "-" "\\-" summary "${SUMMARY}")

roff(synopsis "${usage}")
roff(description "${rest}")
set(page ".\\\" Generated from `${NAME} --help` by cmake/QpManPage.cmake: edit the help text, not this file.\n")
string(APPEND page ".TH ${upper} 1 \"\" \"${version}\" \"User Commands\"\n")
string(APPEND page ".SH NAME\n${NAME} \\- ${summary}\n")
string(APPEND page ".SH SYNOPSIS\n${synopsis}")
string(APPEND page ".SH DESCRIPTION\n${description}")

if(SUBCOMMANDS)
  # The lines under "Commands:" up to the first blank one: "  NAME  ...".
  string(REGEX MATCH "\nCommands:\n([^\n]+\n)+" block "${help}")
  string(REGEX MATCHALL "\n  [a-z]+ " names "${block}")
  string(APPEND page ".SH COMMANDS\n")
  foreach(n ${names})
    string(STRIP "${n}" n)
    run(sub ${n} --help)
    roff(text "${sub}")
    string(APPEND page ".SS ${n}\n${text}")
  endforeach()
endif()
string(APPEND page ".SH SEE ALSO\n${SEE_ALSO}\n")
file(WRITE "${OUT}.tmp" "${page}")
file(RENAME "${OUT}.tmp" "${OUT}")
