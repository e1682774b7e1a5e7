#include "agent/common/socket_mark.h"

#include <gtest/gtest.h>

#include "agent/common/probe_source.h"

namespace ambit {
namespace {

TEST(SocketMarkTest, DeliveryMarkKeepsTheLow12BitsAndDiffers) {
  // istio-cni's in-pod rules match the node proxy's traffic by mark & 0xfff == 0x539.
  EXPECT_EQ(DeliveryMark(kDefaultSocketMark), 0x1539u);
  for (uint32_t mark : {0x539u, 0x1539u, 0x1u, 0xfffu, 0xabcd1539u, 0xffffffffu}) {
    SCOPED_TRACE(mark);
    EXPECT_NE(DeliveryMark(mark), mark);
    EXPECT_EQ(DeliveryMark(mark) & kInpodMarkMask, mark & kInpodMarkMask);
    EXPECT_NE(DeliveryMark(mark), 0u);
    EXPECT_TRUE(CheckSocketMark(mark).ok());
  }
}

TEST(SocketMarkTest, PreviousDeliveryMarkIsTheEarlierBuildsOne) {
  // Data planes built before the bit-12 delivery mark used mark + 1; the agent keeps routing
  // and exempting it while such a data plane drains during an upgrade.
  EXPECT_EQ(PreviousDeliveryMark(kDefaultSocketMark), 0x53au);
  EXPECT_NE(PreviousDeliveryMark(kDefaultSocketMark), DeliveryMark(kDefaultSocketMark));
}

TEST(SocketMarkTest, MarksWithoutADistinctNonZeroDeliveryMarkAreRefused) {
  EXPECT_FALSE(CheckSocketMark(0).ok());
  EXPECT_FALSE(CheckSocketMark(0x1000).ok());  // its delivery mark would be 0
}

TEST(KubeletProbeSourceTest, ParsesOneAddressPerFamily) {
  auto none = ParseKubeletProbeSources("");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  auto both = ParseKubeletProbeSources("169.254.7.127,fd16:9254:7127:1337:ffff:ffff:ffff:ffff");
  ASSERT_TRUE(both.ok()) << both.status();
  ASSERT_EQ(both->size(), 2u);
  EXPECT_EQ((*both)[0].ToString(), "169.254.7.127");
  EXPECT_FALSE((*both)[1].is_v4());
}

TEST(KubeletProbeSourceTest, RefusesWhatWouldTrustTooMuch) {
  for (const char* bad : {"nonsense", "169.254.7.127,169.254.7.128", "127.0.0.1", "::1", "0.0.0.0",
                          "::", "169.254.7.127/32"}) {
    SCOPED_TRACE(bad);
    EXPECT_FALSE(ParseKubeletProbeSources(bad).ok());
  }
}

}  // namespace
}  // namespace ambit
