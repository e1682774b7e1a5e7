#pragma once

// The SO_MARK values that tell ambit's own sockets apart: the BPF programs never redirect a
// socket carrying either (they get both through rodata at load time, from the agent's flag), and
// each enrolled pod routes replies to the delivery mark back to the data plane.

#include <cstdint>

#include "absl/status/status.h"

namespace ambit {

// The mark of the data plane's outbound sockets unless --socket-mark says otherwise; ambitd and
// ambit-tunnel must use the same value (ambitd passes its own to the tunnel it starts). 0x539 is
// also Istio's in-pod mark (istio-cni's InpodMark, ztunnel's), which istio-cni's in-pod rules
// match as mark & 0xfff == 0x539 to leave the node proxy's own traffic alone.
inline constexpr uint32_t kDefaultSocketMark = 0x539;

// The bits istio-cni's in-pod rules look at (InpodMask).
inline constexpr uint32_t kInpodMarkMask = 0xfff;

// The bit that sets delivery sockets apart from outbound ones.
inline constexpr uint32_t kDeliveryMarkBit = 0x1000;

// Inbound delivery sockets carry their own mark, because the pod's fwmark rule must catch
// replies to delivery sockets and nothing the tunnel sends outbound. It differs from the socket
// mark in bit 12 only, so its low 12 bits are the socket mark's: netfilter rules that match the
// node proxy's traffic by mark & 0xfff (istio-cni's in-pod rules, with 0x539) treat delivery as
// the proxy's own too. With mark + 1 (0x53a), istio-cni's OUTPUT rule for TCP port 53 REDIRECTs
// a delivery to a pod's own DNS server to 15053 (measured: tests/e2e/test_inpod_rules.py). Bit
// 12 is flipped, not set, so a socket mark that has it still gets a different delivery mark
// (CheckSocketMark refuses the one mark that would leave none).
constexpr uint32_t DeliveryMark(uint32_t socket_mark) { return socket_mark ^ kDeliveryMarkBit; }

// The delivery mark of data planes built before DeliveryMark flipped bit 12 (mark + 1). An
// upgrade keeps the old data plane serving (and then draining) for a while under the new agent,
// so the agent still treats this mark as ambit's own: the BPF programs never redirect a socket
// carrying it, and every pod routes replies to it back to the data plane. Without that, an old
// data plane's new delivery into a pod would be redirected to the pod's own 15001 listener.
constexpr uint32_t PreviousDeliveryMark(uint32_t socket_mark) { return socket_mark + 1; }

// A --socket-mark both processes can use: not 0 (an unmarked socket is the application's) and
// not kDeliveryMarkBit alone (its delivery mark would be 0).
inline absl::Status CheckSocketMark(uint32_t socket_mark) {
  if (socket_mark == 0 || DeliveryMark(socket_mark) == 0) {
    return absl::InvalidArgumentError(
        "--socket-mark must be neither 0 nor 0x1000: ambit's sockets and its delivery sockets "
        "(the mark with bit 12 flipped) both need a non-zero mark");
  }
  return absl::OkStatus();
}

}  // namespace ambit
