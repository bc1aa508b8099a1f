//! Integration tests: the real binary against the real Docker engine and the real worker image.
//! Run them with `scripts/test.sh`, which sets up the engine, the image and host ffprobe.

mod contexts;
mod cron;
mod doctor;
mod hostile;
mod images;
mod inputs;
mod jobserver;
mod ladder;
mod outputs;
mod pipeline;
mod presets;
mod remote;
mod ssh;
mod state;
mod util;
mod watch;
mod worker;
