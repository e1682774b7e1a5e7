# BPF objects: clang -g -O2 -target bpf, then `bpftool gen skeleton` into a header C++ includes.
# ambit_bpf_object(NAME SOURCE [TEST]) produces ${CMAKE_BINARY_DIR}/bpf/NAME.bpf.o, NAME.skel.h
# (skeleton type ambit_NAME) and the target bpf_NAME. Objects not marked TEST are dependencies
# of ambit_bpf_skeletons, which the agent links.
set(AMBIT_BPF_CFLAGS -g -O2 -target bpf -D__TARGET_ARCH_x86 -Wall -Werror
    -I${CMAKE_SOURCE_DIR}/bpf -I/usr/include/${CMAKE_LIBRARY_ARCHITECTURE})

add_library(ambit_bpf_skeletons INTERFACE)
target_include_directories(ambit_bpf_skeletons INTERFACE ${CMAKE_BINARY_DIR}/bpf
  ${CMAKE_SOURCE_DIR}/bpf)

function(ambit_bpf_object name src)
  cmake_parse_arguments(ARG "TEST" "" "" ${ARGN})
  set(obj ${CMAKE_BINARY_DIR}/bpf/${name}.bpf.o)
  set(skel ${CMAKE_BINARY_DIR}/bpf/${name}.skel.h)
  add_custom_command(OUTPUT ${obj}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/bpf
    COMMAND ${CLANG} ${AMBIT_BPF_CFLAGS} -MD -MF ${obj}.d -c ${src} -o ${obj}
    DEPENDS ${src} DEPFILE ${obj}.d
    COMMENT "BPF ${name}" VERBATIM)
  add_custom_command(OUTPUT ${skel}
    COMMAND sh -c "${BPFTOOL} gen skeleton ${obj} name ambit_${name} > ${skel}.tmp && mv ${skel}.tmp ${skel}"
    DEPENDS ${obj} COMMENT "skeleton ${name}" VERBATIM)
  add_custom_target(bpf_${name} DEPENDS ${skel})
  if(NOT ARG_TEST)
    add_dependencies(ambit_bpf_skeletons bpf_${name})
  endif()
endfunction()
