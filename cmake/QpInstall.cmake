# Install rules: the public header, the library, the qpipe::qpipe CMake
# package and qpipe.pc.
include(CMakePackageConfigHelpers)

install(FILES ${CMAKE_SOURCE_DIR}/lib/include/qpipe.h
              ${CMAKE_BINARY_DIR}/include/qpipe_errors.def
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS qpipe EXPORT qpipeTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
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
configure_file(${CMAKE_SOURCE_DIR}/cmake/qpipe.pc.in
  ${CMAKE_BINARY_DIR}/qpipe.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/qpipe.pc
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
