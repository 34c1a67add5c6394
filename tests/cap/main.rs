//! The per-pod cap holds whatever clients and pods do (issue 13), over real sockets: requests the
//! router gives up on keep their slot until the pod is done (`cancels`), clients that stop
//! reading or trickle their body are cut off and counted (`slow_clients`), and pods that refuse
//! connections leave the rotation by themselves (`ejection`). One test binary, so CI links it
//! once.

#[path = "../support/mod.rs"]
mod support;

mod cancels;
mod ejection;
mod slow_clients;
