//! # The providers supervisor
//!
//! ```text
//! providers (Supervisor: one_for_one)       supervised by root
//! ├── <primary>    ProviderWorker            [provider]
//! └── <fallback>…  ProviderWorker            [[provider.fallbacks]], in chain order
//! ```
//!
//! One actor per provider of the chain (`provider_worker.rs`), each with its own client and
//! circuit breaker, started in chain order. one_for_one: a provider's crash restarts it alone
//! and never touches another, so a fallback keeps serving while the primary's actor restarts.
//! Intensity and backoff are the `[supervision]` ones. Which provider a message goes to is
//! decided by the delivery worker (`route.rs`), from the circuits these actors cache in
//! `Pipeline::ops`.

use crate::pipeline::Pipeline;
use crate::pipeline::provider_worker::{ProviderArgs, ProviderWorker};
use crate::supervisor::{ChildSpec, Strategy, SupervisorSpec};

/// The providers supervisor's spec: one worker per provider of the chain.
pub fn spec(p: &Pipeline) -> SupervisorSpec {
    let sup = &p.config.supervision;
    let mut spec = SupervisorSpec::new(Strategy::OneForOne, sup.intensity()).seed(sup.seed);
    for (index, c) in p.config.provider.chain().into_iter().enumerate() {
        let pp = p.clone();
        spec = spec.child(
            ChildSpec::worker(c.name.clone(), move |_| {
                (
                    ProviderWorker,
                    ProviderArgs {
                        p: pp.clone(),
                        index,
                    },
                )
            })
            .backoff(sup.backoff),
        );
    }
    spec
}
