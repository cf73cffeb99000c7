//! `cellet-agent --bootstrap FILE`: the cell agent.

fn main() {}
