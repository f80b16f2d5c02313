//! The compiled eBPF object, embedded in the binary at build time.
//!
//! `build.rs` compiles `ebpf/programs` for `bpfel-unknown-none`; embedding the
//! result means a node daemon can never run with programs from another build.

/// The ELF object holding every ztunnel eBPF program and map, 8-byte aligned
/// as the ELF parser requires.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ztunnel-ebpf.o"));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redirect::abi::{map_names, program_names};

    #[test]
    fn embedded_object_holds_the_programs_and_maps_userspace_expects() {
        let object =
            aya_obj::Object::parse(OBJECT).expect("the embedded object is a valid eBPF ELF");
        assert!(
            object.programs.contains_key(program_names::CONNECT4),
            "program {} missing; found {:?}",
            program_names::CONNECT4,
            object.programs.keys().collect::<Vec<_>>()
        );
        assert!(
            object.maps.contains_key(map_names::ENROLLED),
            "map {} missing; found {:?}",
            map_names::ENROLLED,
            object.maps.keys().collect::<Vec<_>>()
        );
    }
}
