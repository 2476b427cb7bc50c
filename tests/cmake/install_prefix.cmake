# SPDX-License-Identifier: MIT
# Test fixture for the consumer tests: installs the configured build tree into a fresh prefix.
#   cmake -DBUILD_DIR=<qcow2 build tree> -DPREFIX=<prefix> [-DCONFIG=<config>] -P install_prefix.cmake
foreach(var BUILD_DIR PREFIX)
  if(NOT ${var})
    message(FATAL_ERROR "install_prefix.cmake: pass -D${var}=...")
  endif()
endforeach()
file(REMOVE_RECURSE "${PREFIX}")
set(config_args "")
if(CONFIG)
  set(config_args --config "${CONFIG}")
endif()
execute_process(
  COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" ${config_args}
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install ${BUILD_DIR} --prefix ${PREFIX} failed (${rc})")
endif()
foreach(file include/qcow2/qcow2.hpp share/cmake/qcow2/qcow2Config.cmake share/cmake/qcow2/qcow2ConfigVersion.cmake
             share/cmake/qcow2/qcow2Targets.cmake share/cmake/qcow2/qcow2-codecs.cmake share/pkgconfig/qcow2.pc
             share/doc/qcow2/LICENSE)
  if(NOT EXISTS "${PREFIX}/${file}")
    message(FATAL_ERROR "the install is missing ${file}")
  endif()
endforeach()
