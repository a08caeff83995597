//! Pressure stall information of a cgroup v2 cgroup (`cpu.pressure`, `memory.pressure`,
//! `io.pressure`), for the CRI's PsiStats (the kubelet's KubeletPSI). Each file holds a
//! `some` line and, but for `cpu.pressure` on kernels before 5.13, a `full` one:
//! `some avg10=0.12 avg60=0.05 avg300=0.01 total=123456` (total in microseconds).

use std::path::Path;

/// One line of a pressure file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PsiData {
    /// Microseconds stalled, in all.
    pub total: u64,
    /// Shares of time stalled over the last 10, 60 and 300 s, in hundredths of a percent
    /// (the kernel prints two decimals).
    pub avg10: u32,
    pub avg60: u32,
    pub avg300: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Psi {
    pub some: PsiData,
    pub full: Option<PsiData>,
}

/// The text of a pressure file; None when it has no `some` line.
pub fn parse(text: &str) -> Option<Psi> {
    let mut psi = Psi::default();
    let mut some = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let kind = words.next();
        let mut data = PsiData::default();
        for w in words {
            let Some((k, v)) = w.split_once('=') else {
                continue;
            };
            match k {
                "total" => data.total = v.parse().ok()?,
                "avg10" => data.avg10 = centi(v)?,
                "avg60" => data.avg60 = centi(v)?,
                "avg300" => data.avg300 = centi(v)?,
                _ => {}
            }
        }
        match kind {
            Some("some") => {
                psi.some = data;
                some = true;
            }
            Some("full") => psi.full = Some(data),
            _ => {}
        }
    }
    some.then_some(psi)
}

/// `12.34` as 1234.
fn centi(v: &str) -> Option<u32> {
    let (int, frac) = v.split_once('.').unwrap_or((v, "0"));
    let frac = format!("{frac:0<2}");
    Some(int.parse::<u32>().ok()? * 100 + frac.get(..2)?.parse::<u32>().ok()?)
}

/// `<resource>.pressure` in `dir`, where the kernel keeps PSI.
pub fn read(dir: &Path, resource: &str) -> Option<Psi> {
    parse(&std::fs::read_to_string(dir.join(format!("{resource}.pressure"))).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn some_and_full_lines() {
        let text = "some avg10=1.50 avg60=0.25 avg300=0.00 total=123456\n\
                    full avg10=100.00 avg60=0.05 avg300=0.01 total=42\n";
        let psi = parse(text).unwrap();
        assert_eq!(
            psi.some,
            PsiData {
                total: 123456,
                avg10: 150,
                avg60: 25,
                avg300: 0
            }
        );
        assert_eq!(
            psi.full,
            Some(PsiData {
                total: 42,
                avg10: 10000,
                avg60: 5,
                avg300: 1
            })
        );
        let cpu_before_5_13 = "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n";
        assert_eq!(parse(cpu_before_5_13).unwrap().full, None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("some avg10=x total=1"), None);
    }
}
