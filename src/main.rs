//! The `isc-transcode` binary: build the runtime, run, print the error once, exit.

fn main() {
    let code = match tokio::runtime::Runtime::new() {
        Ok(rt) => match rt.block_on(isc_transcode::app::run()) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e}");
                e.exit_code()
            }
        },
        Err(e) => {
            let e = isc_transcode::error::AppError::Runtime(e);
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code as i32);
}
