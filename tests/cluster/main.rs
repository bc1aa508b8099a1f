//! Integration tests that need several engines on hosts of their own: a fleet (`fleet`) and a
//! Docker Swarm (`swarm`) of network namespaces made by scripts/fleet-hosts.sh, each running its
//! own dockerd with TLS on its own address. They run one at a time (the sets share this
//! machine's two cores, and one test kills or cuts off hosts that the next one heals), in a
//! binary of their own, so that `scripts/test.sh` can run them beside the other integration
//! tests instead of after them: most of their time is spent waiting on the engines.

mod fleet;
mod running;
mod swarm;
#[path = "../integration/util.rs"]
#[expect(
    dead_code,
    reason = "the helpers of every integration test; these use a few"
)]
mod util;
