// ambit-tunnel: the data plane (docs/ARCHITECTURE.md#processes). Started and supervised by ambitd.
#include "agent/main/dataplane_main.h"

int main(int argc, char** argv) {
  return ambit::DataPlaneMain(argc, argv, "ambit-tunnel", "ambit data plane; started by ambitd",
                              nullptr);
}
