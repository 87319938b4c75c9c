//! `lockd-trace merge`: several trace files (a client's and its server's) into one, in time
//! order on the first file's clock, with each host's paths prefixed and devices kept apart
//! (see analyze::Merged). Analysing the result equals analysing the inputs together: the NLM
//! client's and server's records of one lock meet there by file handle and owner (svid).

use std::collections::BTreeSet;

use anyhow::{Context as _, Result};

use crate::{
    analyze::Merged,
    cli::MergeArgs,
    tracefile::{Item, Rotation, Writer},
};

pub fn merge(args: &MergeArgs) -> Result<()> {
    let mut m = Merged::open(&args.files)?;
    let mut header = m.headers().next().expect("at least two files").clone();
    let distinct = |f: fn(&crate::tracefile::Header) -> &String| {
        m.headers()
            .map(f)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("+")
    };
    header.host = distinct(|h| &h.host);
    header.kernel = distinct(|h| &h.kernel);
    let out = &args.output;
    let mut w = Writer::create(out, header, Rotation::default())
        .with_context(|| format!("cannot create {}", out.display()))?;
    let write = |w: &mut Writer, m: &mut Merged| -> std::io::Result<()> {
        while let Some((item, path)) = m.next() {
            match item {
                Item::Event(e) => w.event(&e, path.as_deref())?,
                Item::Kernel(k) => w.kernel(&k)?,
                Item::Lost { kind, total } => w.lost(&kind, total)?,
            }
        }
        w.flush()
    };
    write(&mut w, &mut m).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "lockd-trace: {} events from {} files merged into {} ({} bytes)",
        w.events,
        args.files.len(),
        out.display(),
        w.total_bytes
    );
    m.report()
}
