# Every dependency comes from Debian packages installed by scripts/setup.sh.
find_package(PkgConfig REQUIRED)
find_package(absl REQUIRED)
find_package(Protobuf REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(GTest REQUIRED)
find_package(Threads REQUIRED)
# OpenSSL 3 is gRPC's TLS library: control-plane code only (the CA, the CA API).
find_package(OpenSSL REQUIRED)
pkg_check_modules(LIBBPF REQUIRED IMPORTED_TARGET libbpf)
pkg_check_modules(NGHTTP2 REQUIRED IMPORTED_TARGET libnghttp2)
pkg_check_modules(GRPCPP REQUIRED IMPORTED_TARGET grpc++)
pkg_check_modules(LIBNL REQUIRED IMPORTED_TARGET libnl-3.0 libnl-route-3.0)
pkg_check_modules(MHD REQUIRED IMPORTED_TARGET libmicrohttpd)

find_program(CLANG clang REQUIRED)
find_program(BPFTOOL bpftool PATHS /usr/sbin /sbin REQUIRED)
find_program(PROTOC protoc REQUIRED)

# Debian's BoringSSL (android-libboringssl-dev) lives beside the system OpenSSL under its own
# directories. Only data-plane targets may link it (docs/ARCHITECTURE.md#process-split).
set(BORINGSSL_LIBDIR /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/android)
if(NOT EXISTS ${BORINGSSL_LIBDIR}/libssl.so)
  message(FATAL_ERROR "BoringSSL not found in ${BORINGSSL_LIBDIR}: run scripts/setup.sh")
endif()
add_library(boringssl INTERFACE)
target_include_directories(boringssl SYSTEM INTERFACE /usr/include/android)
target_link_libraries(boringssl INTERFACE ${BORINGSSL_LIBDIR}/libssl.so ${BORINGSSL_LIBDIR}/libcrypto.so)
target_link_options(boringssl INTERFACE -Wl,-rpath,${BORINGSSL_LIBDIR})

# nodejs http-parser (libhttp-parser-dev) for the waypoint's HTTP/1; Debian ships no .pc for it.
find_path(HTTP_PARSER_INCLUDE_DIR http_parser.h REQUIRED)
find_library(HTTP_PARSER_LIBRARY http_parser REQUIRED)
add_library(HttpParser::HttpParser UNKNOWN IMPORTED)
set_target_properties(HttpParser::HttpParser PROPERTIES IMPORTED_LOCATION ${HTTP_PARSER_LIBRARY}
  INTERFACE_INCLUDE_DIRECTORIES ${HTTP_PARSER_INCLUDE_DIR})
