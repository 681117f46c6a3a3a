//! Seeded generators shared by the fuzz tests (`fuzz.rs`) and the kubectl differential test
//! (`kubeconfig_diff.rs`): the same cases for the same seed, no dependency.

/// The server a base kubeconfig must name for the generator's server mutations to apply.
pub const BASE_SERVER: &str = "https://127.0.0.1:6443";

/// A small deterministic generator (SplitMix64): no dependency, the same cases for the same seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Mutations of a kubeconfig's text: structural (what kubectl users really write wrong) and
/// byte-level. Shared by `fuzz.rs` and the kubectl differential test, `kubeconfig_diff.rs`.
/// The server mutations apply to a base whose server is [`BASE_SERVER`].
/// `server` replaces [`BASE_SERVER`] after the text mutations, before the byte-level ones.
pub fn mutate_kubeconfig(rng: &mut Rng, base: &str, server: &str) -> Vec<u8> {
    let mut text = base.to_owned();
    let structural: &[(&str, &str)] = &[
        ("- name: c\n", "- cluster_name: c\n"),
        ("- name: u\n", "- {}\n"),
        ("- name: x\n", ""),
        ("current-context: x", "current-context: missing"),
        ("current-context: x", "current-context: [x]"),
        ("server: https://127.0.0.1:6443", "server: 6443"),
        ("server: https://127.0.0.1:6443", "server: https://[::1"),
        ("server: https://127.0.0.1:6443", "server: {a: b}"),
        ("    namespace: default\n", "    namespace: [default]\n"),
        ("users:\n", "users: {}\n"),
        ("users:\n", "users:\n-\n"),
        ("users:\n", "users: 5\n"),
        ("clusters:\n", "clusters: ~\n"),
        ("apiVersion: v1", "apiVersion: v2"),
        ("kind: Config", "kind: Pod"),
        ("    token: ", "    token: 5\n    tokenx: "),
        (
            "    token: ",
            "    client-key-data: !!binary AAAA\n    token: ",
        ),
        ("    user: u\n", "    user: u\n    user: u2\n"),
        (
            "    certificate-authority: ",
            "    certificate-authority-data: AAAA\n    certificate-authority: ",
        ),
        (
            "    certificate-authority: ",
            "    certificate-authority: /nonexistent",
        ),
        ("\n", "\n\t"),
        ("\n", "\r\n"),
        (": ", ":"),
        ("- ", "-"),
    ];
    for _ in 0..rng.below(3) + 1 {
        match rng.below(10) {
            0..=5 => {
                let (from, to) = rng.pick(structural);
                if let Some(i) = text.find(from) {
                    text.replace_range(i..i + from.len(), to);
                }
            }
            6 => text.push_str("---\nkind: Config\nusers: [\n"),
            7 => {
                // Duplicate an entry list item.
                text = text.replace(
                    "users:\n- name: u\n",
                    "users:\n- name: u\n  user: {}\n- name: u\n",
                );
            }
            8 => {
                let cut = rng.below(text.len());
                text.truncate(cut);
            }
            _ => {}
        }
    }
    let mut bytes = text.replace(BASE_SERVER, server).into_bytes();
    match rng.below(12) {
        0 => {
            // UTF-16LE with a BOM, as PowerShell's `>` writes.
            let s = String::from_utf8_lossy(&bytes).into_owned();
            bytes = vec![0xFF, 0xFE];
            for u in s.encode_utf16() {
                bytes.extend_from_slice(&u.to_le_bytes());
            }
        }
        1 => {
            let mut with = vec![0xEF, 0xBB, 0xBF];
            with.extend_from_slice(&bytes);
            bytes = with;
        }
        2 => {
            for _ in 0..rng.below(4) + 1 {
                if !bytes.is_empty() {
                    let i = rng.below(bytes.len());
                    bytes[i] = rng.next_u64() as u8;
                }
            }
        }
        _ => {}
    }
    bytes
}
