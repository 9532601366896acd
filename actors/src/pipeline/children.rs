//! The root's children for the delivery pipeline, in start order (the tree is drawn in
//! `mod.rs`).

use crate::pipeline::{
    Pipeline, alerts, broker, canary, delivery_rate, monitor, providers, scheduler, store_worker,
    trends,
};
use crate::supervisor::ChildSpec;

/// The root supervisor's children for the delivery pipeline, in start order. The
/// delivery-rate monitor is there only with receipts on, the canary only when it is enabled.
pub fn pipeline_children(p: &Pipeline) -> Vec<ChildSpec> {
    let backoff = p.config.supervision.backoff;
    let (ps, pp, pb, psch) = (p.clone(), p.clone(), p.clone(), p.clone());
    let (pa, pm, pt) = (p.clone(), p.clone(), p.clone());
    let mut children = vec![
        ChildSpec::worker("alerts", move |_| (alerts::AlertWorker, pa.clone())).backoff(backoff),
        ChildSpec::worker("store", move |_| (store_worker::StoreWorker, ps.clone()))
            .backoff(backoff),
        ChildSpec::supervisor("providers", move |_| providers::spec(&pp)).backoff(backoff),
        ChildSpec::supervisor("broker", move |_| broker::spec(&pb)).backoff(backoff),
        ChildSpec::worker("scheduler", move |_| {
            (scheduler::SchedulerWorker, psch.clone())
        })
        .backoff(backoff),
        ChildSpec::worker("monitor", move |_| (monitor::MonitorWorker, pm.clone()))
            .backoff(backoff),
        ChildSpec::worker("trends", move |_| (trends::TrendsWorker, pt.clone())).backoff(backoff),
    ];
    if p.config.provider.receipts_on() {
        let pd = p.clone();
        children.push(
            ChildSpec::worker("delivery_rate", move |_| {
                (delivery_rate::DeliveryRateWorker, pd.clone())
            })
            .backoff(backoff),
        );
    }
    if p.config.canary.every_ms > 0 {
        let pc = p.clone();
        children.push(
            ChildSpec::worker("canary", move |_| (canary::CanaryWorker, pc.clone()))
                .backoff(backoff),
        );
    }
    children
}
