# Fails the build when a binary loads a library its side of the process split must never load
# (docs/ARCHITECTURE.md#process-split): data-plane binaries must not load gRPC or OpenSSL,
# control-plane binaries must not load BoringSSL. The check reads the linked artifact with ldd, so
# it also catches a forbidden library pulled in transitively.
function(ambit_data_plane_binary target)
  add_custom_command(TARGET ${target} POST_BUILD
    COMMAND ${CMAKE_SOURCE_DIR}/cmake/check_links.sh $<TARGET_FILE:${target}> data-plane
    VERBATIM)
endfunction()

function(ambit_control_plane_binary target)
  add_custom_command(TARGET ${target} POST_BUILD
    COMMAND ${CMAKE_SOURCE_DIR}/cmake/check_links.sh $<TARGET_FILE:${target}> control-plane
    VERBATIM)
endfunction()

# The CNI plug-in (ambit-cni): run by the container runtime for every pod, so it loads neither
# TLS library, nor gRPC, nor libcurl.
function(ambit_cni_plugin_binary target)
  add_custom_command(TARGET ${target} POST_BUILD
    COMMAND ${CMAKE_SOURCE_DIR}/cmake/check_links.sh $<TARGET_FILE:${target}> cni-plugin
    VERBATIM)
endfunction()
