//! INTERFACE STUB: the Telegram Bot API platform (being written).

use std::sync::Arc;

use crate::config::{PlatformSpec, Section};

pub fn parse(_section: &mut Section) -> Arc<dyn PlatformSpec> {
    unimplemented!("telegram")
}
