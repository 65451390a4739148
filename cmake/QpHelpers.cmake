# Warnings and sanitizers, applied to every qpipe target through qp_target().

set(QP_WARNINGS -Wall -Wextra -Wshadow -Wformat=2 -Wno-unused-parameter)
if(QP_WERROR)
  list(APPEND QP_WARNINGS -Werror)
endif()

if(QP_SANITIZER)
  string(REPLACE "," ";" _qp_sans "${QP_SANITIZER}")
  set(QP_SAN_FLAGS -fsanitize=${QP_SANITIZER} -fno-omit-frame-pointer)
  if("undefined" IN_LIST _qp_sans)
    list(APPEND QP_SAN_FLAGS -fno-sanitize-recover=undefined)
  endif()
  add_compile_options(${QP_SAN_FLAGS})
  add_link_options(${QP_SAN_FLAGS})
endif()

# qp_target(TARGET): the project's warnings on one target.
function(qp_target tgt)
  target_compile_options(${tgt} PRIVATE ${QP_WARNINGS})
endfunction()
