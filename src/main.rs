fn main() {
    std::process::exit(fleet_agent::main());
}
