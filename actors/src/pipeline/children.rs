//! The root's children for the delivery pipeline, in start order (the tree is drawn in
//! `mod.rs`).

use crate::pipeline::{
    Pipeline, alerts, broker, monitor, provider_worker, scheduler, store_worker,
};
use crate::supervisor::ChildSpec;

/// The root supervisor's children for the delivery pipeline, in start order.
pub fn pipeline_children(p: &Pipeline) -> Vec<ChildSpec> {
    let backoff = p.config.supervision.backoff;
    let (ps, pp, pb, psch) = (p.clone(), p.clone(), p.clone(), p.clone());
    let (pa, pm) = (p.clone(), p.clone());
    vec![
        ChildSpec::worker("alerts", move |_| (alerts::AlertWorker, pa.clone())).backoff(backoff),
        ChildSpec::worker("store", move |_| (store_worker::StoreWorker, ps.clone()))
            .backoff(backoff),
        ChildSpec::worker("provider", move |_| {
            (provider_worker::ProviderWorker, pp.clone())
        })
        .backoff(backoff),
        ChildSpec::supervisor("broker", move |_| broker::spec(&pb)).backoff(backoff),
        ChildSpec::worker("scheduler", move |_| {
            (scheduler::SchedulerWorker, psch.clone())
        })
        .backoff(backoff),
        ChildSpec::worker("monitor", move |_| (monitor::MonitorWorker, pm.clone()))
            .backoff(backoff),
    ]
}
