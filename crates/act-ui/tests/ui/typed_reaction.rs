use serde::Deserialize;

#[derive(Deserialize)]
#[serde(tag = "name", content = "data")]
enum BankEvent {
    Deposited { amount: u64 },
    Withdrawn { amount: u64 },
}

fn main() {
    let _ = act::on!(BankEvent { Deposited, Withdrawn })
        .handle(|_event: BankEvent, _raw, _ctx| async { Ok(()) });
}
