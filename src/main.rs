//! The `isc-transcode` binary: build the runtime, run, print the error once, exit.

fn main() {
    let code = match tokio::runtime::Runtime::new() {
        Ok(rt) => match rt.block_on(isc_transcode::app::run()) {
            Ok(code) => code,
            Err(e) => {
                // Line by line: some errors list several files, one a line, and a name in them
                // must not add lines or colours of its own.
                let text = e.to_string();
                let lines: Vec<_> = text
                    .split('\n')
                    .map(isc_transcode::report::escape)
                    .collect();
                eprintln!("error: {}", lines.join("\n"));
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
