# SPDX-License-Identifier: MIT
# Install rules: the headers, the qcow2::qcow2 target, a CMake package and a pkg-config file.
#
# Included from the top-level CMakeLists.txt when QCOW2_INSTALL is ON. The package is
# architecture independent (headers only), so it goes under share/:
#   <prefix>/include/qcow2/...                  include/ (or single_include/ when QCOW2_USE_SINGLE_HEADER)
#   <prefix>/share/cmake/qcow2/qcow2Config.cmake, qcow2ConfigVersion.cmake, qcow2Targets.cmake,
#                              qcow2-codecs.cmake (replayed by qcow2Config.cmake)
#   <prefix>/share/pkgconfig/qcow2.pc
#   <prefix>/share/doc/qcow2/LICENSE
include(CMakePackageConfigHelpers)

set(QCOW2_INSTALL_CMAKEDIR "${CMAKE_INSTALL_DATADIR}/cmake/qcow2"
    CACHE STRING "Where qcow2Config.cmake is installed, relative to the prefix")
set(QCOW2_INSTALL_PKGCONFIGDIR "${CMAKE_INSTALL_DATADIR}/pkgconfig"
    CACHE STRING "Where qcow2.pc is installed, relative to the prefix")
mark_as_advanced(QCOW2_INSTALL_CMAKEDIR QCOW2_INSTALL_PKGCONFIGDIR)

if(QCOW2_USE_SINGLE_HEADER)
  set(_qcow2_install_headers "${PROJECT_SOURCE_DIR}/single_include/")
else()
  set(_qcow2_install_headers "${PROJECT_SOURCE_DIR}/include/")
endif()
install(DIRECTORY "${_qcow2_install_headers}"
  DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
  COMPONENT qcow2_Development
  FILES_MATCHING PATTERN "*.hpp")

install(TARGETS qcow2 EXPORT qcow2Targets)
install(EXPORT qcow2Targets
  NAMESPACE qcow2::
  DESTINATION "${QCOW2_INSTALL_CMAKEDIR}"
  COMPONENT qcow2_Development)

# The exported target links qcow2::_codec_<LIB> for each codec found now; the installed
# config re-creates those imported targets by replaying qcow2-codecs.cmake with the same
# choice (ON for a codec found here, OFF otherwise) before it includes the targets file.
foreach(_qcow2_codec ZLIB ZSTD LIBDEFLATE)
  if(QCOW2_HAVE_${_qcow2_codec})
    set(QCOW2_PACKAGE_WITH_${_qcow2_codec} ON)
  else()
    set(QCOW2_PACKAGE_WITH_${_qcow2_codec} OFF)
  endif()
endforeach()

configure_package_config_file(
  "${PROJECT_SOURCE_DIR}/cmake/qcow2Config.cmake.in"
  "${PROJECT_BINARY_DIR}/qcow2Config.cmake"
  INSTALL_DESTINATION "${QCOW2_INSTALL_CMAKEDIR}")
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/qcow2ConfigVersion.cmake"
  VERSION "${PROJECT_VERSION}"
  COMPATIBILITY SameMajorVersion
  ARCH_INDEPENDENT)
install(FILES
    "${PROJECT_BINARY_DIR}/qcow2Config.cmake"
    "${PROJECT_BINARY_DIR}/qcow2ConfigVersion.cmake"
    "${PROJECT_SOURCE_DIR}/cmake/qcow2-codecs.cmake"
  DESTINATION "${QCOW2_INSTALL_CMAKEDIR}"
  COMPONENT qcow2_Development)

# The license travels with the headers.
install(FILES "${PROJECT_SOURCE_DIR}/LICENSE"
  DESTINATION "${CMAKE_INSTALL_DATADIR}/doc/qcow2"
  COMPONENT qcow2_Development)

# pkg-config: the same definitions and codec libraries as the CMake target.
set(QCOW2_PC_CFLAGS "")
set(QCOW2_PC_LIBS "")
foreach(_qcow2_codec IN ITEMS "ZLIB;z" "ZSTD;zstd" "LIBDEFLATE;deflate")
  list(GET _qcow2_codec 0 _qcow2_name)
  list(GET _qcow2_codec 1 _qcow2_lib)
  if(QCOW2_HAVE_${_qcow2_name})
    string(APPEND QCOW2_PC_CFLAGS " -DQCOW2_HAS_${_qcow2_name}=1")
    string(APPEND QCOW2_PC_LIBS " -l${_qcow2_lib}")
  else()
    string(APPEND QCOW2_PC_CFLAGS " -DQCOW2_HAS_${_qcow2_name}=0")
  endif()
endforeach()
if(QCOW2_USE_SINGLE_HEADER)
  string(APPEND QCOW2_PC_CFLAGS " -DQCOW2_SINGLE_HEADER=1")
endif()
# Relocatable: the prefix is found from the .pc file's own directory, so the file stays
# right under `cmake --install --prefix` and DESTDIR.
if(IS_ABSOLUTE "${QCOW2_INSTALL_PKGCONFIGDIR}")
  set(QCOW2_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
else()
  file(RELATIVE_PATH _qcow2_up "/prefix/${QCOW2_INSTALL_PKGCONFIGDIR}" "/prefix")
  string(REGEX REPLACE "/$" "" _qcow2_up "${_qcow2_up}")
  set(QCOW2_PC_PREFIX "\${pcfiledir}/${_qcow2_up}")
endif()
if(IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(QCOW2_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
else()
  set(QCOW2_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
configure_file("${PROJECT_SOURCE_DIR}/cmake/qcow2.pc.in" "${PROJECT_BINARY_DIR}/qcow2.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/qcow2.pc"
  DESTINATION "${QCOW2_INSTALL_PKGCONFIGDIR}"
  COMPONENT qcow2_Development)

unset(_qcow2_install_headers)
unset(_qcow2_codec)
unset(_qcow2_name)
unset(_qcow2_lib)
unset(_qcow2_up)
