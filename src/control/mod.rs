//! The control API (for the control engine): its routes (`api`) and the event stream that
//! tells a subscribed engine about routed HTTP requests (`events`). Connections reach them
//! through the dispatch layer (`serve`).

pub mod api;
pub mod events;
