//! `lockd-trace probes`: the probe plan as this kernel took it.

use anyhow::Result;

use crate::{cli::ProbesArgs, probes::Tracer};

pub fn run(args: &ProbesArgs) -> Result<()> {
    let mut opts = args.tracing.options();
    if args.monitor {
        opts.filter = lockd_trace_common::filter::NFS_ONLY;
        opts.nfs_only = true;
    }
    let tracer = Tracer::start(&opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&tracer.report)?);
        return Ok(());
    }
    println!("{:<26} {:<11} {:<28} NOTES", "PROBE", "ATTACHED", "TARGET");
    for r in &tracer.report {
        let (how, target) = r.attached.as_ref().map_or(("no".to_string(), "-"), |a| {
            (a.method.to_string(), a.target)
        });
        let notes = r
            .refused
            .iter()
            .map(|x| {
                if x.tried() {
                    format!("{} refused: {}", x.method, x.reason)
                } else {
                    x.reason.clone()
                }
            })
            .chain(r.layout.iter().map(|l| format!("layout from {l}")))
            .chain(
                r.attached
                    .iter()
                    .filter_map(|a| a.maxactive)
                    .map(|n| format!("room for {n} calls in flight")),
            )
            .collect::<Vec<_>>()
            .join("; ");
        println!("{:<26} {:<11} {:<28} {}", r.probe, how, target, notes);
    }
    println!(
        "\n{} of {} probes attached on {}",
        tracer.attached(),
        tracer.report.len(),
        kernel_release()
    );
    println!("{}", tracer.layout_said());
    match tracer.mode_said() {
        Some(mode) => println!("{mode}"),
        None => println!("monitor: `lockd-trace probes --monitor` shows the plan it takes"),
    }
    println!("{}", crate::probes::monitor_hooks_said());
    Ok(())
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown kernel".into())
}
