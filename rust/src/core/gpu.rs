//! GPUs and accelerators: PCI devices read from sysfs or from lspci text, named through pci.ids.
//!
//! Readers take their roots (`/sys`, `/dev`, `/proc`) as arguments so tests can point them at fake trees.
//! lspci text comes in several shapes (`-mm -nn -D`, plain, `-k`, `-v[v]nn`, `-vmm`); all become the same
//! [`Gpu`] records.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::core::error::{NativeError, Result};
use crate::core::util::read_string;

/// PCI class+subclass codes of GPUs and accelerators: VGA, 3D and other display controllers, and processing
/// accelerators (where AI accelerators register).
pub const GPU_CLASSES: [u16; 4] = [0x0300, 0x0302, 0x0380, 0x1200];

/// Where distributions install pci.ids: Debian (pciutils), Fedora and EL (hwdata), and older layouts.
pub const PCI_IDS_PATHS: [&str; 3] = ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids"];

/// A vendor or device id the source did not give (plain lspci output names devices without ids). PCI config
/// reads return 0xffff for an absent function, so no real vendor uses it.
pub const UNKNOWN_ID: u16 = 0xffff;

/// A GPU or accelerator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// `dddd:bb:dd.f`, lower case, domain always present.
    pub pci_address: String,
    pub vendor_id: u16,
    pub device_id: u16,
    /// "NVIDIA", "AMD", "Intel" or "other".
    pub vendor: &'static str,
    pub model: Option<String>,
    pub class_id: u16,
    pub driver: Option<String>,
    pub numa_node: Option<i32>,
    pub device_nodes: Vec<String>,
}

pub fn is_gpu_class(class_id: u16) -> bool {
    GPU_CLASSES.contains(&class_id)
}

pub fn vendor_label(vendor_id: u16) -> &'static str {
    match vendor_id {
        0x10de => "NVIDIA",
        // 0x1022 is AMD's CPU-side id; some APU functions carry it.
        0x1002 | 0x1022 => "AMD",
        0x8086 => "Intel",
        _ => "other",
    }
}

/// Vendor names as lspci prints them for the vendors of GPU-class devices, including older pci.ids spellings,
/// so plain lspci output (names without ids) can be read without a pci.ids file.
const KNOWN_VENDOR_NAMES: &[(u16, &str)] = &[
    (0x10de, "NVIDIA Corporation"),
    (0x10de, "nVidia Corporation"),
    (0x1002, "Advanced Micro Devices, Inc. [AMD/ATI]"),
    (0x1002, "Advanced Micro Devices [AMD] nee ATI"),
    (0x1002, "ATI Technologies Inc"),
    (0x1022, "Advanced Micro Devices, Inc. [AMD]"),
    (0x1022, "Advanced Micro Devices [AMD]"),
    (0x8086, "Intel Corporation"),
    (0x1a03, "ASPEED Technology, Inc."),
    (0x102b, "Matrox Electronics Systems Ltd."),
    (0x1da3, "Habana Labs Ltd."),
];

/// Class names lspci prints for the GPU classes when it is not given -nn.
fn class_id_from_name(name: &str) -> Option<u16> {
    match name {
        "VGA compatible controller" => Some(0x0300),
        "3D controller" => Some(0x0302),
        "Display controller" => Some(0x0380),
        "Processing accelerators" => Some(0x1200),
        _ => None,
    }
}

/// `bb:dd.f` or `dddd:bb:dd.f` (hex) to the sysfs spelling `dddd:bb:dd.f`; None for anything else.
pub fn normalize_pci_address(text: &str) -> Option<String> {
    let (rest, function) = text.rsplit_once('.')?;
    if function.len() != 1 || !function.chars().all(|c| c.is_digit(8)) {
        return None;
    }
    let parts: Vec<&str> = rest.split(':').collect();
    let (domain, bus, device) = match parts.as_slice() {
        [bus, device] => ("0000", *bus, *device),
        [domain, bus, device] => (*domain, *bus, *device),
        _ => return None,
    };
    let is_hex =
        |s: &str, min: usize, max: usize| (min..=max).contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit());
    // Domains above 0xffff exist (Intel VMD), so the domain may be longer than four digits.
    if !is_hex(domain, 4, 8) || !is_hex(bus, 2, 2) || !is_hex(device, 2, 2) {
        return None;
    }
    Some(format!("{domain}:{bus}:{device}.{function}").to_ascii_lowercase())
}

fn parse_hex_u32(text: &str) -> Option<u32> {
    let t = text.trim();
    let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    u32::from_str_radix(t, 16).ok()
}

fn parse_hex4(text: &str) -> Option<u16> {
    if text.len() == 4 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        u16::from_str_radix(text, 16).ok()
    } else {
        None
    }
}

/// Length of `vendor` at the start of `text` when it is the whole text or followed by a space.
fn vendor_prefix_len(text: &str, vendor: &str) -> Option<usize> {
    let rest = text.strip_prefix(vendor)?;
    (rest.is_empty() || rest.starts_with(' ')).then_some(vendor.len())
}

// ---------------------------------------------------------------------------------------------------------------
// pci.ids

/// What a caller needs from pci.ids. The file is about 1.3 MB; one pass keeps only these entries.
#[derive(Debug, Default)]
pub struct PciIdsQuery {
    /// Vendor ids whose names are wanted.
    pub vendors: HashSet<u16>,
    /// (vendor, device) pairs whose names are wanted.
    pub devices: HashSet<(u16, u16)>,
    /// lspci texts "<vendor name> <device name>" to turn back into ids.
    pub texts: Vec<String>,
}

/// The vendor of pci.ids whose name starts a queried text (the longest such name), and the devices of that vendor
/// named like the rest of the text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextMatch {
    pub vendor_id: u16,
    pub vendor_name_len: usize,
    /// Devices whose name is exactly the rest of the text.
    pub exact_devices: Vec<u16>,
    /// Devices whose name is the rest of the text followed by a bracketed marketing name.
    pub bracketed_devices: usize,
    /// The device id when the rest of the text is lspci's `Device dddd` (no name in the pci.ids lspci used)...
    pub placeholder_device: Option<u16>,
    /// ...and its name in this pci.ids, if it has one by now.
    pub placeholder_name: Option<String>,
}

impl TextMatch {
    /// The device id the text names, when only one device can be meant. pci.ids names devices "Chip [Marketing
    /// name]" and adds the bracket over the years: lspci output made with an older pci.ids may print a bare
    /// "Vega 20" for a device that today's file calls "Vega 20 [Radeon Pro VII/Radeon Instinct MI50]", while
    /// another device is still called plain "Vega 20". A bare name that also exists with brackets is ambiguous.
    pub fn device_id(&self) -> Option<u16> {
        match self.exact_devices.as_slice() {
            [only] if self.bracketed_devices == 0 => Some(*only),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
pub struct PciIdsAnswer {
    pub vendors: HashMap<u16, String>,
    pub devices: HashMap<(u16, u16), String>,
    /// One entry per queried text, in query order.
    pub texts: Vec<Option<TextMatch>>,
}

/// `vvvv  Name` (after any leading tabs were removed) to (id, name).
fn split_id_name(line: &str) -> Option<(u16, &str)> {
    let id = parse_hex4(line.get(..4)?)?;
    let rest = line.get(4..)?;
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    Some((id, rest.trim()))
}

/// One pass over pci.ids text answering `query`. Vendor lines are `vvvv  Name`, device lines `\tdddd  Name`,
/// subsystem lines `\t\tssss ssss  Name` (skipped). The `C cc  Name` class section comes after the last vendor and
/// holds nothing of vendors or devices, so the scan stops there instead of reading the rest of the file.
pub fn scan_pci_ids<R: BufRead>(mut reader: R, query: &PciIdsQuery) -> io::Result<PciIdsAnswer> {
    let mut answer = PciIdsAnswer { texts: vec![None; query.texts.len()], ..Default::default() };
    let wanted_device_vendors: HashSet<u16> = query.devices.iter().map(|(v, _)| *v).collect();
    let mut current_vendor: Option<u16> = None;
    // Texts whose best vendor so far is the vendor of the current section.
    let mut active_texts: Vec<usize> = Vec::new();
    let mut raw = Vec::with_capacity(256);
    loop {
        raw.clear();
        if reader.read_until(b'\n', &mut raw)? == 0 {
            break;
        }
        // pci.ids is UTF-8 today; very old copies carry Latin-1 names, which must not stop the scan.
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with("C ") {
            break;
        }
        if line.starts_with("\t\t") {
            continue;
        }
        if let Some(device_line) = line.strip_prefix('\t') {
            let Some(vendor) = current_vendor else { continue };
            if active_texts.is_empty() && !wanted_device_vendors.contains(&vendor) {
                continue;
            }
            let Some((device, name)) = split_id_name(device_line) else { continue };
            if query.devices.contains(&(vendor, device)) {
                answer.devices.insert((vendor, device), name.to_string());
            }
            for &i in &active_texts {
                let Some(found) = answer.texts[i].as_mut() else { continue };
                let rest = query.texts[i][found.vendor_name_len..].trim_start();
                if found.placeholder_device == Some(device) {
                    found.placeholder_name = Some(name.to_string());
                }
                if name == rest {
                    found.exact_devices.push(device);
                } else if name.strip_prefix(rest).is_some_and(|tail| tail.starts_with(" [")) {
                    found.bracketed_devices += 1;
                }
            }
            continue;
        }
        let Some((vendor, name)) = split_id_name(line) else {
            current_vendor = None;
            active_texts.clear();
            continue;
        };
        current_vendor = Some(vendor);
        active_texts.clear();
        if query.vendors.contains(&vendor) {
            answer.vendors.insert(vendor, name.to_string());
        }
        for (i, text) in query.texts.iter().enumerate() {
            let Some(len) = vendor_prefix_len(text, name) else { continue };
            let better = answer.texts[i].as_ref().is_none_or(|m| len > m.vendor_name_len);
            if better {
                let placeholder_device = placeholder_ids(text[len..].trim_start()).and_then(|(_, d)| d);
                answer.texts[i] = Some(TextMatch {
                    vendor_id: vendor,
                    vendor_name_len: len,
                    placeholder_device,
                    ..Default::default()
                });
                active_texts.push(i);
            }
        }
    }
    Ok(answer)
}

/// The pci.ids to use: the given path, else the first of [`PCI_IDS_PATHS`] that exists. A database that cannot be
/// opened is not an error: names are an enrichment, the ids stand without them.
fn open_pci_ids(explicit: Option<&Path>) -> Option<BufReader<File>> {
    match explicit {
        Some(path) => File::open(path).ok().map(BufReader::new),
        None => PCI_IDS_PATHS.iter().find_map(|p| File::open(p).ok()).map(BufReader::new),
    }
}

/// Look `query` up in the pci.ids at `pci_ids` (or the default places); an empty answer when there is none.
pub fn lookup_pci_ids(pci_ids: Option<&Path>, query: &PciIdsQuery) -> PciIdsAnswer {
    let empty = || PciIdsAnswer { texts: vec![None; query.texts.len()], ..Default::default() };
    if query.vendors.is_empty() && query.devices.is_empty() && query.texts.is_empty() {
        return empty();
    }
    match open_pci_ids(pci_ids) {
        Some(reader) => scan_pci_ids(reader, query).unwrap_or_else(|_| empty()),
        None => empty(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// lspci text

/// One device as lspci described it, before names are resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LspciDevice {
    address: String,
    class_id: Option<u16>,
    vendor_id: Option<u16>,
    device_id: Option<u16>,
    /// "<vendor name> <device name>" with ids, revision and prog-if removed.
    names: String,
    /// Length of the vendor name in `names` when the format keeps the two apart (-mm, -vmm).
    vendor_name_len: Option<usize>,
    driver: Option<String>,
    numa_node: Option<i32>,
}

/// Remove a trailing ` [xxxx]` id (four hex digits) from a name, as -nn prints it.
fn split_trailing_id(field: &str) -> (&str, Option<u16>) {
    let field = field.trim();
    if let Some(open) = field.rfind('[') {
        if field.ends_with(']') {
            if let Some(id) = parse_hex4(&field[open + 1..field.len() - 1]) {
                return (field[..open].trim_end(), Some(id));
            }
        }
    }
    (field, None)
}

/// A class as lspci prints it: `VGA compatible controller [0300]` (-nn), `Class 0300` (no name known), or a name.
fn parse_class(field: &str) -> Option<u16> {
    let (name, id) = split_trailing_id(field);
    if id.is_some() {
        return id;
    }
    if let Some(hex) = name.strip_prefix("Class ") {
        return parse_hex4(hex.trim());
    }
    class_id_from_name(name)
}

/// Remove the ` (rev xx)` and ` (prog-if xx [..])` that lspci appends after the names.
fn strip_lspci_suffixes(mut text: &str) -> &str {
    loop {
        text = text.trim_end();
        let Some(open) = text.rfind(" (") else { return text };
        let group = &text[open + 1..];
        if group.ends_with(')') && (group.starts_with("(rev ") || group.starts_with("(prog-if ")) {
            text = &text[..open];
        } else {
            return text;
        }
    }
}

/// `-nn` ends the names with `[vvvv:dddd]`.
fn split_trailing_pair(text: &str) -> (&str, Option<(u16, u16)>) {
    let text = text.trim_end();
    if let Some(open) = text.rfind('[') {
        if text.ends_with(']') {
            if let Some((v, d)) = text[open + 1..text.len() - 1].split_once(':') {
                if let (Some(v), Some(d)) = (parse_hex4(v), parse_hex4(d)) {
                    return (text[..open].trim_end(), Some((v, d)));
                }
            }
        }
    }
    (text, None)
}

/// Split an `lspci -mm` line after the address into its quoted fields and bare `-rXX`/`-pXX` options.
fn mm_fields(text: &str) -> Vec<&str> {
    let mut fields = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            // Names are not escaped; a closing quote is one followed by a space or the end of the line.
            let mut end = None;
            for (i, _) in quoted.match_indices('"') {
                let after = &quoted[i + 1..];
                if after.is_empty() || after.starts_with(' ') {
                    end = Some(i);
                    break;
                }
            }
            let end = end.unwrap_or(quoted.len());
            fields.push(&quoted[..end]);
            rest = quoted.get(end + 1..).unwrap_or("").trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            if !rest[..end].starts_with('-') {
                fields.push(&rest[..end]);
            }
            rest = rest[end..].trim_start();
        }
    }
    fields
}

fn mm_device<'a>(address: String, text: &'a str) -> Option<LspciDevice> {
    let fields = mm_fields(text);
    let [class, vendor, device, ..] = fields.as_slice() else { return None };
    let class_id = parse_class(class);
    // Only -nn appends ids, and then to every field; without it a name that happens to end in "[beef]" stays whole.
    let with_ids = split_trailing_id(class).1.is_some();
    let split = |field: &'a str| if with_ids { split_trailing_id(field) } else { (field.trim(), None) };
    let (vendor_name, vendor_id) = split(vendor);
    let (device_name, device_id) = split(device);
    Some(LspciDevice {
        address,
        class_id,
        vendor_id,
        device_id,
        names: format!("{vendor_name} {device_name}").trim().to_string(),
        vendor_name_len: Some(vendor_name.len()),
        ..Default::default()
    })
}

/// The one-line forms: plain, -nn, and the header lines of -k / -v / -vv.
fn line_device(address: String, text: &str) -> Option<LspciDevice> {
    // Class names never contain ": "; device names may ("Data Fabric: Device 18h"), so split at the first one.
    let (class, names) = text.split_once(": ")?;
    let (names, ids) = split_trailing_pair(strip_lspci_suffixes(names));
    Some(LspciDevice {
        address,
        class_id: parse_class(class),
        vendor_id: ids.map(|(v, _)| v),
        device_id: ids.map(|(_, d)| d),
        names: names.trim().to_string(),
        ..Default::default()
    })
}

/// Indented lines of -k and -v output that belong to the device above them.
fn apply_detail_line(device: &mut LspciDevice, line: &str) {
    let Some((key, value)) = line.trim().split_once(':') else { return };
    let value = value.trim();
    match key.trim() {
        "Kernel driver in use" if !value.is_empty() => device.driver = Some(value.to_string()),
        "NUMA node" => device.numa_node = value.parse().ok(),
        _ => {}
    }
}

/// `lspci -vmm` records: `Key:\tvalue` lines, one record per `Slot:`, records separated by blank lines.
fn apply_vmm_field(device: &mut LspciDevice, vendor: &mut String, name: &mut String, key: &str, value: &str) {
    match key {
        "Class" => device.class_id = parse_class(value),
        "Vendor" => {
            let (n, id) = split_trailing_id(value);
            *vendor = n.to_string();
            device.vendor_id = id;
        }
        "Device" => {
            let (n, id) = split_trailing_id(value);
            *name = n.to_string();
            device.device_id = id;
        }
        "Driver" => device.driver = Some(value.to_string()),
        "NUMANode" => device.numa_node = value.parse().ok(),
        _ => {}
    }
}

fn parse_lspci_devices(text: &str) -> Vec<LspciDevice> {
    let mut devices: Vec<LspciDevice> = Vec::new();
    // While inside a -vmm record: its device and its vendor and device names.
    let mut vmm: Option<(LspciDevice, String, String)> = None;
    let finish_vmm = |vmm: &mut Option<(LspciDevice, String, String)>, devices: &mut Vec<LspciDevice>| {
        if let Some((mut device, vendor, name)) = vmm.take() {
            device.names = format!("{vendor} {name}").trim().to_string();
            device.vendor_name_len = Some(vendor.len());
            devices.push(with_placeholder_pair(device));
        }
    };
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            finish_vmm(&mut vmm, &mut devices);
            continue;
        }
        if let Some(slot) = line.strip_prefix("Slot:") {
            finish_vmm(&mut vmm, &mut devices);
            vmm = normalize_pci_address(slot.trim())
                .map(|address| (LspciDevice { address, ..Default::default() }, String::new(), String::new()));
            continue;
        }
        if let Some((device, vendor, name)) = vmm.as_mut() {
            if let Some((key, value)) = line.split_once(':') {
                apply_vmm_field(device, vendor, name, key.trim(), value.trim());
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(device) = devices.last_mut() {
                apply_detail_line(device, line);
            }
            continue;
        }
        let (first, rest) = line.split_once(' ').unwrap_or((line, ""));
        let Some(address) = normalize_pci_address(first) else { continue };
        let device =
            if rest.trim_start().starts_with('"') { mm_device(address, rest) } else { line_device(address, rest) };
        devices.extend(device.map(with_placeholder_pair));
    }
    finish_vmm(&mut vmm, &mut devices);
    devices
}

/// lspci's words for a device it has no name for: `Device` (-nn, the id follows in brackets), `Device dddd`, or
/// `Device vvvv:dddd` when it knows neither.
fn placeholder_ids(name: &str) -> Option<(Option<u16>, Option<u16>)> {
    let rest = name.strip_prefix("Device")?;
    if rest.is_empty() {
        return Some((None, None));
    }
    let rest = rest.strip_prefix(' ')?;
    match rest.split_once(':') {
        Some((v, d)) => Some((Some(parse_hex4(v)?), Some(parse_hex4(d)?))),
        None => Some((None, Some(parse_hex4(rest)?))),
    }
}

/// lspci run without any pci.ids prints `Device vvvv:dddd`: both ids are in the text.
fn with_placeholder_pair(mut device: LspciDevice) -> LspciDevice {
    if device.vendor_id.is_none() && device.device_id.is_none() {
        if let Some((Some(v), Some(d))) = placeholder_ids(&device.names) {
            device.vendor_id = Some(v);
            device.device_id = Some(d);
            device.names.clear();
        }
    }
    device
}

/// The longest built-in vendor name that starts `text`.
fn known_vendor_prefix(text: &str) -> Option<(u16, usize)> {
    KNOWN_VENDOR_NAMES
        .iter()
        .filter_map(|(id, name)| vendor_prefix_len(text, name).map(|len| (*id, len)))
        .max_by_key(|(_, len)| *len)
}

/// Length of the name of vendor `id` at the start of `text`, from pci.ids or the built-in names.
fn vendor_name_len_for(text: &str, id: u16, answer: &PciIdsAnswer) -> Option<usize> {
    let from_db = answer.vendors.get(&id).and_then(|name| vendor_prefix_len(text, name));
    from_db.or_else(|| {
        KNOWN_VENDOR_NAMES
            .iter()
            .filter(|(known, _)| *known == id)
            .filter_map(|(_, name)| vendor_prefix_len(text, name))
            .max()
    })
}

/// Turn what lspci said about one device, and what pci.ids says, into a [`Gpu`].
fn resolve_lspci_device(device: LspciDevice, by_text: Option<&TextMatch>, answer: &PciIdsAnswer) -> Gpu {
    // Which vendor, and where its name ends in the text.
    let (mut vendor_id, name_len) = match device.vendor_id {
        Some(id) => (id, device.vendor_name_len.or_else(|| vendor_name_len_for(&device.names, id, answer))),
        None => {
            let known = known_vendor_prefix(&device.names);
            let db = by_text.map(|m| (m.vendor_id, m.vendor_name_len));
            match known.into_iter().chain(db).max_by_key(|(_, len)| *len) {
                Some((id, len)) => (id, device.vendor_name_len.or(Some(len))),
                None => (UNKNOWN_ID, device.vendor_name_len),
            }
        }
    };
    let rest = name_len.map_or(device.names.as_str(), |len| device.names[len..].trim());
    let placeholder = placeholder_ids(rest);
    if let Some((Some(v), _)) = placeholder {
        if vendor_id == UNKNOWN_ID {
            vendor_id = v;
        }
    }
    let db_match = by_text.filter(|m| m.vendor_id == vendor_id);
    let device_id = device
        .device_id
        .or(placeholder.and_then(|(_, d)| d))
        .or_else(|| db_match.and_then(TextMatch::device_id))
        .unwrap_or(UNKNOWN_ID);
    let db_name = answer
        .devices
        .get(&(vendor_id, device_id))
        .cloned()
        .or_else(|| db_match.and_then(|m| m.placeholder_name.clone()));
    let text_name = (placeholder.is_none() && !rest.is_empty()).then(|| rest.to_string());
    Gpu {
        pci_address: device.address,
        vendor_id,
        device_id,
        vendor: vendor_label(vendor_id),
        model: db_name.or(text_name),
        class_id: device.class_id.unwrap_or_default(),
        driver: device.driver,
        numa_node: device.numa_node.filter(|n| *n >= 0),
        device_nodes: Vec::new(),
    }
}

/// GPUs and accelerators in lspci output (`-mm -nn -D` preferred; plain, `-k`, `-v[v][nn]` and `-vmm` accepted).
/// Models come from pci.ids when it can be read (`pci_ids`, else the usual places), else from the text's names.
/// Text without devices (no lspci, no GPU) gives an empty list.
pub fn parse_lspci(text: &str, pci_ids: Option<&Path>) -> Vec<Gpu> {
    let devices: Vec<LspciDevice> =
        parse_lspci_devices(text).into_iter().filter(|d| d.class_id.is_some_and(is_gpu_class)).collect();
    let mut query = PciIdsQuery::default();
    let mut text_slots: Vec<Option<usize>> = Vec::with_capacity(devices.len());
    for device in &devices {
        if let Some(vendor) = device.vendor_id {
            query.vendors.insert(vendor);
        }
        if let (Some(v), Some(d)) = (device.vendor_id, device.device_id) {
            query.devices.insert((v, d));
            text_slots.push(None);
        } else {
            text_slots.push(Some(query.texts.len()));
            query.texts.push(device.names.clone());
        }
    }
    let answer = lookup_pci_ids(pci_ids, &query);
    devices
        .into_iter()
        .zip(text_slots)
        .map(|(device, slot)| {
            let by_text = slot.and_then(|i| answer.texts[i].as_ref());
            resolve_lspci_device(device, by_text, &answer)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// sysfs

/// `Device Minor: N` from /proc/driver/nvidia/gpus/<address>/information: the N of /dev/nvidiaN.
pub fn parse_nvidia_minor(information: &str) -> Option<u32> {
    information.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "Device Minor").then(|| value.trim().parse().ok()).flatten()
    })
}

/// One PCI function of `<sysfs>/bus/pci/devices`, if it is a GPU or accelerator. None when it is another class or
/// vanished while being read (hot unplug, SR-IOV VFs going away).
fn read_sysfs_gpu(dir: &Path, address: String) -> Option<Gpu> {
    let read_hex = |name: &str| read_string(&dir.join(name)).ok().and_then(|s| parse_hex_u32(&s));
    // `class` is 0xccsspp: class, subclass, programming interface.
    let class_id = u16::try_from(read_hex("class")? >> 8).ok()?;
    if !is_gpu_class(class_id) {
        return None;
    }
    let vendor_id = u16::try_from(read_hex("vendor")?).ok()?;
    let device_id = u16::try_from(read_hex("device")?).ok()?;
    let numa_node = read_string(&dir.join("numa_node")).ok().and_then(|s| s.trim().parse::<i32>().ok());
    let driver = fs::read_link(dir.join("driver"))
        .ok()
        .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()));
    Some(Gpu {
        pci_address: address,
        vendor_id,
        device_id,
        vendor: vendor_label(vendor_id),
        model: None,
        class_id,
        driver,
        numa_node: numa_node.filter(|n| *n >= 0),
        device_nodes: Vec::new(),
    })
}

/// `renderD*` names under `<device>/drm`, sorted.
fn render_nodes(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir.join("drm")) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("renderD"))
        .collect();
    names.sort();
    names
}

fn path_string(path: PathBuf) -> String {
    path.to_string_lossy().into_owned()
}

/// GPUs and accelerators from `<sysfs>/bus/pci/devices`, sorted by PCI address, with the device files a container
/// needs under `dev`. NVIDIA minors come from `<proc>/driver/nvidia/gpus/<address>/information` when the driver
/// published it, else from the order of the GPUs bound to the nvidia driver (the driver's own default).
/// No sysfs, or no PCI bus in it (some containers), gives an empty list.
pub fn list_gpus_with_proc(sysfs: &Path, proc: &Path, dev: &Path, pci_ids: Option<&Path>) -> Result<Vec<Gpu>> {
    let devices_dir = sysfs.join("bus/pci/devices");
    let entries = match fs::read_dir(&devices_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(NativeError::io(&devices_dir, e)),
    };
    let mut gpus: Vec<Gpu> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let address = normalize_pci_address(&e.file_name().to_string_lossy())?;
            read_sysfs_gpu(&e.path(), address)
        })
        .collect();
    gpus.sort_by(|a, b| a.pci_address.cmp(&b.pci_address));

    let query =
        PciIdsQuery { devices: gpus.iter().map(|g| (g.vendor_id, g.device_id)).collect(), ..Default::default() };
    let answer = lookup_pci_ids(pci_ids, &query);
    let kfd = dev.join("kfd");
    let has_kfd = kfd.exists();
    let mut nvidia_ordinal = 0u32;
    for gpu in &mut gpus {
        gpu.model = answer.devices.get(&(gpu.vendor_id, gpu.device_id)).cloned();
        let device_dir = devices_dir.join(&gpu.pci_address);
        if gpu.vendor_id == 0x10de && gpu.driver.as_deref() == Some("nvidia") {
            let information = proc.join("driver/nvidia/gpus").join(&gpu.pci_address).join("information");
            let minor = read_string(&information).ok().and_then(|s| parse_nvidia_minor(&s)).unwrap_or(nvidia_ordinal);
            nvidia_ordinal += 1;
            gpu.device_nodes.push(path_string(dev.join(format!("nvidia{minor}"))));
        }
        for node in render_nodes(&device_dir) {
            gpu.device_nodes.push(path_string(dev.join("dri").join(node)));
        }
        if gpu.vendor == "AMD" && has_kfd {
            gpu.device_nodes.push(path_string(kfd.clone()));
        }
    }
    Ok(gpus)
}

/// [`list_gpus_with_proc`] with /proc found next to sysfs: `/sys` pairs with `/proc`, and a test tree
/// `<root>/sys` with `<root>/proc`.
pub fn list_gpus(sysfs: &Path, dev: &Path, pci_ids: Option<&Path>) -> Result<Vec<Gpu>> {
    let proc = match sysfs.parent() {
        Some(parent) => parent.join("proc"),
        None => PathBuf::from("/proc"),
    };
    list_gpus_with_proc(sysfs, &proc, dev, pci_ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const PCI_IDS: &str = "# header comment\n\
10de  NVIDIA Corporation\n\
\t2204  GA102 [GeForce RTX 3090]\n\
\t2302  GH100\n\
\t2321  GH100 [H100L 94GB]\n\
\t2343  GH100\n\
\t27b0  AD104GL [RTX 4000 SFF Ada Generation]\n\
1002  Advanced Micro Devices, Inc. [AMD/ATI]\n\
\t66a1  Vega 20 [Radeon Pro VII/Radeon Instinct MI50]\n\
\t\t1002 0834  Radeon Instinct MI50 32GB\n\
\t66a2  Vega 20\n\
\t7550  Navi 48 [Radeon RX 9070/9070 XT/9070 GRE]\n\
1022  Advanced Micro Devices, Inc. [AMD]\n\
\t14a4  Genoa Root Complex\n\
1a03  ASPEED Technology, Inc.\n\
\t2000  ASPEED Graphics Family\n\
C 03  Display controller\n\
\t00  VGA compatible controller\n\
\t02  3D controller\n\
1a03  Not a vendor: after the class section\n\
\t0002  Not a device\n";

    fn scan(query: &PciIdsQuery) -> PciIdsAnswer {
        scan_pci_ids(PCI_IDS.as_bytes(), query).unwrap()
    }

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("gp-gpu-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, rel: &str, content: &str) -> PathBuf {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, content).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(normalize_pci_address("03:00.0").as_deref(), Some("0000:03:00.0"));
        assert_eq!(normalize_pci_address("000C:01:00.1").as_deref(), Some("000c:01:00.1"));
        assert_eq!(normalize_pci_address("10000:e1:00.0").as_deref(), Some("10000:e1:00.0"));
        for bad in ["", "03:00", "3:00.0", "03:00.8", "Slot:", "0000:03:00.0x", "zz:00.0"] {
            assert_eq!(normalize_pci_address(bad), None, "{bad}");
        }
    }

    #[test]
    fn pci_ids_lookups_skip_subsystems_and_classes() {
        let mut query = PciIdsQuery::default();
        query.vendors.insert(0x1002);
        query.devices.extend([(0x10de, 0x2321), (0x1002, 0x66a1), (0x1a03, 0x2000), (0x1a03, 0x0002)]);
        let answer = scan(&query);
        assert_eq!(answer.vendors[&0x1002], "Advanced Micro Devices, Inc. [AMD/ATI]");
        assert_eq!(answer.devices[&(0x10de, 0x2321)], "GH100 [H100L 94GB]");
        assert_eq!(answer.devices[&(0x1002, 0x66a1)], "Vega 20 [Radeon Pro VII/Radeon Instinct MI50]");
        assert_eq!(answer.devices[&(0x1a03, 0x2000)], "ASPEED Graphics Family");
        // Nothing after the class section is read.
        assert!(!answer.devices.contains_key(&(0x1a03, 0x0002)));
        assert_eq!(answer.devices.len(), 3);
    }

    #[test]
    fn pci_ids_names_back_to_ids() {
        let query = PciIdsQuery {
            texts: vec![
                "NVIDIA Corporation GH100 [H100L 94GB]".into(),
                "NVIDIA Corporation GH100".into(),
                "Advanced Micro Devices, Inc. [AMD/ATI] Vega 20".into(),
                "Advanced Micro Devices, Inc. [AMD] Device 14a4".into(),
                "Unknown Vendor Thing".into(),
            ],
            ..Default::default()
        };
        let answer = scan(&query);
        let h100 = answer.texts[0].as_ref().unwrap();
        assert_eq!((h100.vendor_id, h100.device_id()), (0x10de, Some(0x2321)));
        // Two devices are called plain "GH100".
        assert_eq!(answer.texts[1].as_ref().unwrap().device_id(), None);
        // One device is called plain "Vega 20" today, but older pci.ids called 66a1 that too.
        let vega = answer.texts[2].as_ref().unwrap();
        assert_eq!((vega.vendor_id, vega.exact_devices.as_slice(), vega.device_id()), (0x1002, &[0x66a2][..], None));
        // "[AMD]" is not "[AMD/ATI]".
        let genoa = answer.texts[3].as_ref().unwrap();
        assert_eq!(genoa.vendor_id, 0x1022);
        assert_eq!(genoa.placeholder_name.as_deref(), Some("Genoa Root Complex"));
        assert!(answer.texts[4].is_none());
    }

    #[test]
    fn lspci_mm_nn() {
        let text = "00:08.1 \"PCI bridge [0604]\" \"Advanced Micro Devices, Inc. [AMD] [1022]\" \
\"Phoenix Internal GPP Bridge to Bus [C:A] [14eb]\" -p00 \"\" \"\"\n\
03:00.0 \"VGA compatible controller [0300]\" \"Advanced Micro Devices, Inc. [AMD/ATI] [1002]\" \
\"Navi 48 [Radeon RX 9070/9070 XT/9070 GRE] [7550]\" -rc0 -p00 \"ASUSTeK Computer Inc. [1043]\" \"Device [061a]\"\n\
0000:41:00.0 \"3D controller [0302]\" \"NVIDIA Corporation [10de]\" \"Device [2321]\" -ra1 \"NVIDIA Corporation [10de]\" \"Device [1839]\"\n";
        let gpus = parse_lspci(text, Some(Path::new("/nonexistent/pci.ids")));
        assert_eq!(gpus.len(), 2);
        let navi = &gpus[0];
        assert_eq!(navi.pci_address, "0000:03:00.0");
        assert_eq!((navi.vendor_id, navi.device_id, navi.class_id), (0x1002, 0x7550, 0x0300));
        assert_eq!(navi.vendor, "AMD");
        assert_eq!(navi.model.as_deref(), Some("Navi 48 [Radeon RX 9070/9070 XT/9070 GRE]"));
        let h100 = &gpus[1];
        assert_eq!((h100.vendor_id, h100.device_id, h100.class_id), (0x10de, 0x2321, 0x0302));
        assert_eq!(h100.model, None, "unnamed without pci.ids");
        assert!(h100.device_nodes.is_empty());

        let dir = TempDir::new("mm");
        let ids = dir.write("pci.ids", PCI_IDS);
        let gpus = parse_lspci(text, Some(&ids));
        assert_eq!(gpus[1].model.as_deref(), Some("GH100 [H100L 94GB]"));

        // -mm without -nn: names only.
        let text = "03:00.0 \"VGA compatible controller\" \"Advanced Micro Devices, Inc. [AMD/ATI]\" \
\"Navi 48 [Radeon RX 9070/9070 XT/9070 GRE]\" -rc0 -p00 \"ASUSTeK Computer Inc.\" \"Device 061a\"\n";
        for db in [Some(ids.as_path()), Some(Path::new("/nonexistent"))] {
            let gpus = parse_lspci(text, db);
            assert_eq!((gpus[0].class_id, gpus[0].vendor_id), (0x0300, 0x1002));
            let expected_id = if db == Some(ids.as_path()) { 0x7550 } else { UNKNOWN_ID };
            assert_eq!(gpus[0].device_id, expected_id);
            assert_eq!(gpus[0].model.as_deref(), Some("Navi 48 [Radeon RX 9070/9070 XT/9070 GRE]"));
        }
    }

    #[test]
    fn lspci_nn_and_verbose_headers() {
        let text = "0000:01:00.0 VGA compatible controller [0300]: NVIDIA Corporation GA102 [GeForce RTX 3090] \
[10de:2204] (rev a1) (prog-if 00 [VGA controller])\n\
\tSubsystem: Gigabyte Technology Co., Ltd Device [1458:403b]\n\
\tNUMA node: 1\n\
\tKernel driver in use: nvidia\n\
000c:01:00.0 VGA compatible controller [0300]: NVIDIA Corporation Device [10de:27b0] (rev a1)\n\
000c:01:00.1 Audio device [0403]: NVIDIA Corporation Device [10de:22bc] (rev a1)\n";
        let gpus = parse_lspci(text, Some(Path::new("/nonexistent")));
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].model.as_deref(), Some("GA102 [GeForce RTX 3090]"));
        assert_eq!(gpus[0].driver.as_deref(), Some("nvidia"));
        assert_eq!(gpus[0].numa_node, Some(1));
        assert_eq!((gpus[1].pci_address.as_str(), gpus[1].device_id), ("000c:01:00.0", 0x27b0));
        assert_eq!(gpus[1].model, None, "lspci's `Device` is no name");
    }

    #[test]
    fn lspci_plain_and_k() {
        let text = "00:00.0 Host bridge: Advanced Micro Devices, Inc. [AMD] Device 14a4 (rev 01)\r\n\
07:00.0 VGA compatible controller: Advanced Micro Devices, Inc. [AMD/ATI] Vega 20 (rev 02)\r\n\
\tSubsystem: Advanced Micro Devices, Inc. [AMD/ATI] Device 0834\r\n\
\tKernel driver in use: amdgpu\r\n\
\tKernel modules: amdgpu\r\n\
24:00.0 VGA compatible controller: ASPEED Technology, Inc. ASPEED Graphics Family (rev 41)\r\n\
c1:00.0 3D controller: NVIDIA Corporation GH100 [H100L 94GB] (rev a1)\r\n\
c2:00.0 Processing accelerators: Habana Labs Ltd. Device 1020\r\n\
c3:00.0 Class 0300: Device 10de:2204 (rev a1)";
        let dir = TempDir::new("plain");
        let ids = dir.write("pci.ids", PCI_IDS);
        for db in [None, Some(ids.as_path())] {
            let db = db.or(Some(Path::new("/nonexistent")));
            let gpus = parse_lspci(text, db);
            let found: Vec<(&str, u16, u16, u16, &str)> =
                gpus.iter().map(|g| (g.pci_address.as_str(), g.class_id, g.vendor_id, g.device_id, g.vendor)).collect();
            let with_db = db == Some(ids.as_path());
            assert_eq!(
                found,
                [
                    ("0000:07:00.0", 0x0300, 0x1002, UNKNOWN_ID, "AMD"),
                    ("0000:24:00.0", 0x0300, 0x1a03, if with_db { 0x2000 } else { UNKNOWN_ID }, "other"),
                    ("0000:c1:00.0", 0x0302, 0x10de, if with_db { 0x2321 } else { UNKNOWN_ID }, "NVIDIA"),
                    ("0000:c2:00.0", 0x1200, 0x1da3, 0x1020, "other"),
                    ("0000:c3:00.0", 0x0300, 0x10de, 0x2204, "NVIDIA"),
                ]
            );
            assert_eq!(gpus[0].model.as_deref(), Some("Vega 20"));
            assert_eq!(gpus[0].driver.as_deref(), Some("amdgpu"));
            assert_eq!(gpus[1].model.as_deref(), Some("ASPEED Graphics Family"));
            assert_eq!(gpus[1].driver, None);
            assert_eq!(gpus[2].model.as_deref(), Some("GH100 [H100L 94GB]"));
            assert_eq!(gpus[3].model, None);
            let rtx = if with_db { Some("GA102 [GeForce RTX 3090]") } else { None };
            assert_eq!(gpus[4].model.as_deref(), rtx);
        }
    }

    #[test]
    fn lspci_vmm() {
        let text = "Slot:\t0000:41:00.0\nClass:\t3D controller [0302]\nVendor:\tNVIDIA Corporation [10de]\n\
Device:\tGH100 [H100L 94GB] [2321]\nSVendor:\tNVIDIA Corporation [10de]\nSDevice:\tDevice [1839]\nRev:\ta1\n\
Driver:\tnvidia\nNUMANode:\t0\n\nSlot:\t0000:42:00.0\nClass:\tEthernet controller [0200]\nVendor:\tIntel [8086]\n\
Device:\tX710 [1572]\n\nSlot:\t0000:c1:00.0\nClass:\tDisplay controller\nVendor:\tAdvanced Micro Devices, Inc. [AMD/ATI]\n\
Device:\tAldebaran/MI200 [Instinct MI210]\nNUMANode:\t-1\n";
        let gpus = parse_lspci(text, Some(Path::new("/nonexistent")));
        assert_eq!(gpus.len(), 2);
        assert_eq!((gpus[0].vendor_id, gpus[0].device_id, gpus[0].numa_node), (0x10de, 0x2321, Some(0)));
        assert_eq!(gpus[0].driver.as_deref(), Some("nvidia"));
        assert_eq!(gpus[0].model.as_deref(), Some("GH100 [H100L 94GB]"));
        assert_eq!((gpus[1].class_id, gpus[1].vendor_id, gpus[1].numa_node), (0x0380, 0x1002, None));
        assert_eq!(gpus[1].model.as_deref(), Some("Aldebaran/MI200 [Instinct MI210]"));
    }

    #[test]
    fn lspci_without_gpus() {
        assert!(parse_lspci("", None).is_empty());
        assert!(parse_lspci("00:00.0 Host bridge: Intel Corporation Device 1234\n", None).is_empty());
        assert!(parse_lspci(
            "pcilib: Cannot open /proc/bus/pci\nlspci: Cannot find any working access method.\n",
            None
        )
        .is_empty());
    }

    #[test]
    fn nvidia_information() {
        let text = "Model: \t\t NVIDIA H100 PCIe\nIRQ:   \t\t 120\nBus Location: \t 0000:41:00.0\nDevice Minor: \t 3\n";
        assert_eq!(parse_nvidia_minor(text), Some(3));
        assert_eq!(parse_nvidia_minor("Model: x\n"), None);
    }

    /// A PCI function under `<root>/sys/bus/pci/devices`, as the kernel lays it out (a directory per address).
    fn fake_device(root: &TempDir, address: &str, class: &str, vendor: &str, device: &str, numa: &str, driver: &str) {
        let dir = format!("sys/bus/pci/devices/{address}");
        root.write(&format!("{dir}/class"), &format!("{class}\n"));
        root.write(&format!("{dir}/vendor"), &format!("{vendor}\n"));
        root.write(&format!("{dir}/device"), &format!("{device}\n"));
        root.write(&format!("{dir}/numa_node"), &format!("{numa}\n"));
        if !driver.is_empty() {
            let target = root.0.join("sys/bus/pci/drivers").join(driver);
            fs::create_dir_all(&target).unwrap();
            symlink(&target, root.0.join(&dir).join("driver")).unwrap();
        }
    }

    #[test]
    fn sysfs_tree() {
        let root = TempDir::new("sysfs");
        fake_device(&root, "0000:41:00.0", "0x030200", "0x10de", "0x2321", "0", "nvidia");
        fake_device(&root, "0000:c1:00.0", "0x030200", "0x10de", "0x2321", "1", "nvidia");
        fake_device(&root, "0000:c1:00.1", "0x040300", "0x10de", "0x22bc", "1", "snd_hda_intel");
        fake_device(&root, "0000:03:00.0", "0x038000", "0x1002", "0x740f", "-1", "amdgpu");
        fake_device(&root, "0000:00:00.0", "0x060000", "0x1022", "0x14a4", "-1", "");
        root.write("sys/bus/pci/devices/0000:03:00.0/drm/renderD128/dev", "226:128\n");
        root.write("sys/bus/pci/devices/0000:03:00.0/drm/card0/dev", "226:0\n");
        root.write("proc/driver/nvidia/gpus/0000:c1:00.0/information", "Device Minor: \t 7\n");
        root.write("dev/kfd", "");
        let ids = root.write("pci.ids", PCI_IDS);
        let dev = root.0.join("dev");

        let gpus = list_gpus(&root.0.join("sys"), &dev, Some(&ids)).unwrap();
        let addresses: Vec<&str> = gpus.iter().map(|g| g.pci_address.as_str()).collect();
        assert_eq!(addresses, ["0000:03:00.0", "0000:41:00.0", "0000:c1:00.0"]);
        let amd = &gpus[0];
        assert_eq!(
            (amd.vendor, amd.class_id, amd.numa_node, amd.driver.as_deref()),
            ("AMD", 0x0380, None, Some("amdgpu"))
        );
        let dev_s = dev.to_string_lossy();
        assert_eq!(amd.device_nodes, [format!("{dev_s}/dri/renderD128"), format!("{dev_s}/kfd")]);
        assert_eq!(amd.model, None, "740f is not in this pci.ids");
        let first = &gpus[1];
        assert_eq!(first.model.as_deref(), Some("GH100 [H100L 94GB]"));
        assert_eq!((first.numa_node, first.device_nodes.clone()), (Some(0), vec![format!("{dev_s}/nvidia0")]));
        // The driver published the minor of the second one.
        assert_eq!(gpus[2].device_nodes, [format!("{dev_s}/nvidia7")]);

        // Without /dev/kfd, AMD gets only its render node.
        fs::remove_file(dev.join("kfd")).unwrap();
        let gpus = list_gpus(&root.0.join("sys"), &dev, Some(Path::new("/nonexistent"))).unwrap();
        assert_eq!(gpus[0].device_nodes, [format!("{dev_s}/dri/renderD128")]);
        assert!(gpus.iter().all(|g| g.model.is_none()));
    }

    #[test]
    fn no_sysfs_is_no_gpu() {
        let root = TempDir::new("empty");
        assert!(list_gpus(&root.0.join("sys"), &root.0.join("dev"), None).unwrap().is_empty());
        root.write("sys", "not a directory");
        assert!(list_gpus(&root.0.join("sys"), &root.0.join("dev"), None).unwrap().is_empty());
    }
}
