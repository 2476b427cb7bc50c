# SPDX-License-Identifier: MIT
# Finds the optional compression libraries and records the choice.
#
# Each QCOW2_WITH_<LIB> is AUTO (use it when found), ON (fail when missing) or OFF.
# The result is an imported target linked INTERFACE and a QCOW2_HAS_<LIB>=0|1
# definition, so consumers compile the same code the library was configured for.
# This file is also installed and replayed by qcow2Config.cmake.

function(_qcow2_find_codec name header library)
  set(mode "${QCOW2_WITH_${name}}")
  if(mode STREQUAL "")
    set(mode AUTO)
  endif()
  set(QCOW2_HAVE_${name} OFF PARENT_SCOPE)
  if(mode STREQUAL "OFF")
    return()
  endif()
  find_path(QCOW2_${name}_INCLUDE_DIR "${header}")
  find_library(QCOW2_${name}_LIBRARY NAMES ${library})
  if(QCOW2_${name}_INCLUDE_DIR AND QCOW2_${name}_LIBRARY)
    if(NOT TARGET qcow2::_codec_${name})
      add_library(qcow2::_codec_${name} UNKNOWN IMPORTED)
      set_target_properties(qcow2::_codec_${name} PROPERTIES
        IMPORTED_LOCATION "${QCOW2_${name}_LIBRARY}"
        INTERFACE_INCLUDE_DIRECTORIES "${QCOW2_${name}_INCLUDE_DIR}")
    endif()
    set(QCOW2_HAVE_${name} ON PARENT_SCOPE)
  elseif(mode STREQUAL "ON")
    message(FATAL_ERROR "QCOW2_WITH_${name}=ON but ${header} / lib${library} were not found")
  endif()
endfunction()

_qcow2_find_codec(ZLIB zlib.h z)
_qcow2_find_codec(ZSTD zstd.h zstd)
_qcow2_find_codec(LIBDEFLATE libdeflate.h deflate)

function(qcow2_link_codecs target)
  foreach(name ZLIB ZSTD LIBDEFLATE)
    if(QCOW2_HAVE_${name})
      target_link_libraries(${target} INTERFACE qcow2::_codec_${name})
      target_compile_definitions(${target} INTERFACE QCOW2_HAS_${name}=1)
    else()
      target_compile_definitions(${target} INTERFACE QCOW2_HAS_${name}=0)
    endif()
  endforeach()
endfunction()
