# Install rules: the public header, the shared and the static library, the
# programs and their man pages, the qpipe::qpipe CMake package and a
# relocatable qpipe.pc. `cmake --install build --prefix DIR` (or `make
# install PREFIX=DIR`) puts them under DIR; tests/it_install.sh builds a
# program against such an install with pkg-config and with find_package.
include(CMakePackageConfigHelpers)

install(FILES ${CMAKE_SOURCE_DIR}/lib/include/qpipe.h
              ${CMAKE_BINARY_DIR}/include/qpipe_errors.def
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS qpipe EXPORT qpipeTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
# The static library is the same objects as the shared one; installed as
# libqpipe.a beside libqpipe.so (pkg-config --static --libs qpipe lists
# what it needs).
install(FILES $<TARGET_FILE:qpipe_static>
        DESTINATION ${CMAKE_INSTALL_LIBDIR} RENAME libqpipe.a)
install(TARGETS qpiped qpipe_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(EXPORT qpipeTargets NAMESPACE qpipe::
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/qpipe)
configure_package_config_file(${CMAKE_SOURCE_DIR}/cmake/qpipeConfig.cmake.in
  ${CMAKE_BINARY_DIR}/qpipeConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/qpipe)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/qpipeConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/qpipeConfig.cmake
              ${CMAKE_BINARY_DIR}/qpipeConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/qpipe)

# qpipe.pc finds its prefix from its own place (${pcfiledir}), unless the
# directories were given as absolute paths.
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}"
   OR IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(QP_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  set(QP_PC_LIBDIR "${CMAKE_INSTALL_FULL_LIBDIR}")
  set(QP_PC_INCLUDEDIR "${CMAKE_INSTALL_FULL_INCLUDEDIR}")
else()
  file(RELATIVE_PATH _qp_up "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
  set(QP_PC_PREFIX "\${pcfiledir}/${_qp_up}")
  set(QP_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
  set(QP_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
configure_file(${CMAKE_SOURCE_DIR}/cmake/qpipe.pc.in
  ${CMAKE_BINARY_DIR}/qpipe.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/qpipe.pc
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# Man pages, made at build time from the programs' own --help
# (cmake/QpManPage.cmake): the help text is their one source.
if(NOT CMAKE_CROSSCOMPILING)
  set(_qp_man ${CMAKE_BINARY_DIR}/man)
  add_custom_command(OUTPUT ${_qp_man}/qpipe.1
    COMMAND ${CMAKE_COMMAND} -E make_directory ${_qp_man}
    COMMAND ${CMAKE_COMMAND} -DBIN=$<TARGET_FILE:qpipe_cli> -DNAME=qpipe
      "-DSUMMARY=Python's multiprocessing Queue and Pipe from the shell"
      -DSUBCOMMANDS=ON "-DSEE_ALSO=qpiped(1)" -DOUT=${_qp_man}/qpipe.1
      -P ${CMAKE_SOURCE_DIR}/cmake/QpManPage.cmake
    DEPENDS qpipe_cli ${CMAKE_SOURCE_DIR}/cmake/QpManPage.cmake
    COMMENT "Man page qpipe.1 from qpipe --help" VERBATIM)
  add_custom_command(OUTPUT ${_qp_man}/qpiped.1
    COMMAND ${CMAKE_COMMAND} -E make_directory ${_qp_man}
    COMMAND ${CMAKE_COMMAND} -DBIN=$<TARGET_FILE:qpiped> -DNAME=qpiped
      "-DSUMMARY=the qpipe server: this host's queues and pipes over the network"
      "-DSEE_ALSO=qpipe(1)" -DOUT=${_qp_man}/qpiped.1
      -P ${CMAKE_SOURCE_DIR}/cmake/QpManPage.cmake
    DEPENDS qpiped ${CMAKE_SOURCE_DIR}/cmake/QpManPage.cmake
    COMMENT "Man page qpiped.1 from qpiped --help" VERBATIM)
  add_custom_target(qp_man ALL DEPENDS ${_qp_man}/qpipe.1 ${_qp_man}/qpiped.1)
  install(FILES ${_qp_man}/qpipe.1 ${_qp_man}/qpiped.1
          DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
endif()
