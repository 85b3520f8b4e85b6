//! Every map of the kernel side. Sizes given here are placeholders where the
//! agent sets the real value at load time (`cache_size`).
use agent_common::{
    Control, ExitKey, ExitValue, ProcKey, ProcValue, Scratch, TaskExe, COUNTER_COUNT, TASK_EXE_ENTRIES,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};

#[map(name = "PROC_0")]
pub static PROC_0: HashMap<ProcKey, ProcValue> = HashMap::with_max_entries(256, 0);
#[map(name = "PROC_1")]
pub static PROC_1: HashMap<ProcKey, ProcValue> = HashMap::with_max_entries(256, 0);
#[map(name = "EXIT_0")]
pub static EXIT_0: HashMap<ExitKey, ExitValue> = HashMap::with_max_entries(256, 0);
#[map(name = "EXIT_1")]
pub static EXIT_1: HashMap<ExitKey, ExitValue> = HashMap::with_max_entries(256, 0);

#[map(name = "TASK_EXE")]
pub static TASK_EXE: LruHashMap<u32, TaskExe> = LruHashMap::with_max_entries(TASK_EXE_ENTRIES, 0);

#[map(name = "CONTROL")]
pub static CONTROL: Array<Control> = Array::with_max_entries(1, 0);
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2 * COUNTER_COUNT, 0);
#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
