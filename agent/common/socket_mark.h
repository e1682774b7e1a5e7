#pragma once

// The SO_MARK values that tell ambit's own sockets apart: the BPF programs never redirect a
// socket carrying either (they get both through rodata at load time, from the agent's flag), and
// each enrolled pod routes replies to the delivery mark back to the data plane.

#include <cstdint>

namespace ambit {

// The mark of the data plane's outbound sockets unless --socket-mark says otherwise; ambitd and
// ambit-tunnel must use the same value (ambitd passes its own to the tunnel it starts).
inline constexpr uint32_t kDefaultSocketMark = 0x539;

// Inbound delivery sockets carry their own mark, one above the outbound mark: the pod's fwmark
// rule must catch replies to delivery sockets and nothing the tunnel sends outbound.
constexpr uint32_t DeliveryMark(uint32_t socket_mark) { return socket_mark + 1; }

}  // namespace ambit
